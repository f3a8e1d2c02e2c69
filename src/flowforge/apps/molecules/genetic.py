r"""Genetic operators of InVirtuoGen's optimiser (Kaech et al. 2025, arXiv:2509.26405; ``genetic_ppo.py``).

- :class:`CrossoverPrompter`: the top-10 **vocabulary** of good molecules. A newcomer whose Tanimoto
  similarity (Morgan radius 2, 2048 bits) to an entry exceeds 0.3 replaces the most similar entry only if it
  scores higher; otherwise it takes a free place or replaces the worst entry when it beats it. Parents are
  drawn with weights :math:`\propto 1/(\kappa N + \mathrm{rank})` (rank 0 = best, :math:`\kappa = 10^{-3}`).
- :func:`brics_crossover`: a BRICS piece of parent 1 (the larger side of a cut BRICS bond: "all but the
  last fragment") joined by a single bond to a BRICS piece of parent 2 ("its last fragment"). The result is
  only a **prompt**: :func:`encode_prompts` turns it into the flow's ``x0``, which overwrites the source at
  ``t = 0`` and stays updatable while the flow refines it.
- :func:`mutate`: a small RDKit graph mutation (change an atom's element, add a terminal atom, remove a
  terminal atom), retried until RDKit sanitises the result; InVirtuoGen uses mol-opt's Graph-GA mutation,
  which has more move types.

Randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowforge.data.tokens import Vocabulary

__all__ = ["CrossoverPrompter", "brics_crossover", "encode_prompts", "mutate", "fingerprint", "tanimoto"]


def _randint(generator: torch.Generator | None, n: int) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def fingerprint(smiles: str):
    """Morgan fingerprint (radius 2, 2048 bits) of a SMILES, or None when RDKit cannot parse it."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    return rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048).GetFingerprint(mol)


def tanimoto(a, b) -> float:
    """Tanimoto similarity of two RDKit bit vectors."""
    from rdkit import DataStructs

    return float(DataStructs.TanimotoSimilarity(a, b))


class CrossoverPrompter:
    r"""InVirtuoGen's top-``size`` vocabulary of parents and its rank-weighted parent draw.

    Args:
        size: entries kept (10).
        threshold: Tanimoto similarity above which a newcomer competes with the entry it resembles (0.3).
        kappa: :math:`\kappa` of the parent weights :math:`1/(\kappa N + \mathrm{rank})` (1e-3).

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> p = CrossoverPrompter(size=2)
        >>> _ = p.update(["CCO", "c1ccccc1O", "CCCCCCO"], [0.2, 0.5, 0.3]) if rdkit_available() else None
        >>> [s for s, _ in p.entries] if rdkit_available() else ["c1ccccc1O", "CCCCCCO"]
        ['Oc1ccccc1', 'CCCCCCO']
    """

    def __init__(self, size: int = 10, *, threshold: float = 0.3, kappa: float = 1e-3) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}; InVirtuoGen keeps 10")
        self.size, self.threshold, self.kappa = int(size), float(threshold), float(kappa)
        self.entries: list[tuple[str, float]] = []
        self._fps: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def update(self, smiles: Sequence[str], scores: Sequence[float]) -> int:
        """Offer molecules with their scores; returns how many entered the vocabulary."""
        from flowforge.data.molecules import canonical

        entered = 0
        for s, score in zip(smiles, scores):
            c = canonical(s) if s else None
            if c is None or score is None or any(c == e for e, _ in self.entries):
                continue
            fp = fingerprint(c)
            sims = [tanimoto(fp, self._fps[e]) for e, _ in self.entries]
            similar = [i for i, v in enumerate(sims) if v > self.threshold]
            if similar:
                j = max(similar, key=lambda i: sims[i])
                if score <= self.entries[j][1]:
                    continue
                self._fps.pop(self.entries[j][0], None)
                self.entries[j] = (c, float(score))
            elif len(self.entries) < self.size:
                self.entries.append((c, float(score)))
            elif score > self.entries[-1][1]:
                self._fps.pop(self.entries[-1][0], None)
                self.entries[-1] = (c, float(score))
            else:
                continue
            self._fps[c] = fp
            self.entries.sort(key=lambda e: -e[1])
            entered += 1
        return entered

    def weights(self) -> Tensor:
        r"""Parent weights :math:`1/(\kappa N + \mathrm{rank})`, normalised, ``(N,)`` (best first)."""
        n = len(self.entries)
        w = 1.0 / (self.kappa * n + torch.arange(n, dtype=torch.float64))
        return w / w.sum()

    def parents(self, n: int, generator: torch.Generator | None = None) -> list[tuple[str, str]]:
        """``n`` parent pairs, each two distinct entries (the same one twice when there is only one)."""
        if not self.entries:
            raise ValueError(
                "the vocabulary is empty: update() it with scored molecules before drawing parents"
            )
        w = self.weights()
        pairs = []
        for _ in range(n):
            if len(self.entries) == 1:
                pairs.append((self.entries[0][0], self.entries[0][0]))
                continue
            i, j = torch.multinomial(w, 2, replacement=False, generator=generator).tolist()
            pairs.append((self.entries[i][0], self.entries[j][0]))
        return pairs

    def parent(self, generator: torch.Generator | None = None) -> str:
        """One rank-weighted parent (e.g. for :func:`mutate`)."""
        return self.parents(1, generator)[0][0]


def _cut_bonds(mol) -> list[int]:
    """Indices of BRICS bonds (single, acyclic); any acyclic single bond when BRICS finds none."""
    from rdkit import Chem
    from rdkit.Chem import BRICS

    idx = []
    for (a, b), _ in BRICS.FindBRICSBonds(mol):
        bond = mol.GetBondBetweenAtoms(a, b)
        if bond is not None and bond.GetBondType() == Chem.BondType.SINGLE and not bond.IsInRing():
            idx.append(bond.GetIdx())
    if not idx:
        idx = [
            b.GetIdx() for b in mol.GetBonds() if b.GetBondType() == Chem.BondType.SINGLE and not b.IsInRing()
        ]
    return sorted(set(idx))


def _piece(mol, generator: torch.Generator | None, larger: bool | None):
    """Cut ``mol`` at a random cut bond; one side with a dummy atom where the bond was (None: no cut)."""
    from rdkit import Chem

    bonds = _cut_bonds(mol)
    if not bonds:
        return None
    bond = bonds[_randint(generator, len(bonds))]
    frags = Chem.GetMolFrags(Chem.FragmentOnBonds(mol, [bond], dummyLabels=[(1, 1)]), asMols=True)
    if len(frags) != 2:
        return None
    if larger is None:
        return frags[_randint(generator, 2)]
    return max(frags, key=lambda f: f.GetNumAtoms()) if larger else min(frags, key=lambda f: f.GetNumAtoms())


def _join(a, b):
    """Bond the atoms next to the dummy atoms of ``a`` and ``b`` and drop the dummies; None if RDKit refuses."""
    from rdkit import Chem

    rw = Chem.RWMol(Chem.CombineMols(a, b))
    n_a = a.GetNumAtoms()
    dummies = [at.GetIdx() for at in rw.GetAtoms() if at.GetAtomicNum() == 0]
    da = [d for d in dummies if d < n_a]
    db = [d for d in dummies if d >= n_a]
    if len(da) != 1 or len(db) != 1:
        return None
    na = [x.GetIdx() for x in rw.GetAtomWithIdx(da[0]).GetNeighbors()]
    nb = [x.GetIdx() for x in rw.GetAtomWithIdx(db[0]).GetNeighbors()]
    if len(na) != 1 or len(nb) != 1:
        return None
    rw.AddBond(na[0], nb[0], Chem.BondType.SINGLE)
    for d in sorted([da[0], db[0]], reverse=True):
        rw.RemoveAtom(d)
    try:
        mol = rw.GetMol()
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several sanitisation errors; any of them means "no child"
        return None
    return mol


def brics_crossover(
    parent1: str, parent2: str, generator: torch.Generator | None = None, *, tries: int = 10
) -> str | None:
    """A child SMILES: parent 1's larger side of a cut BRICS bond joined to a random side of one of parent 2's.

    Returns the canonical SMILES, or None when neither parent can be cut (e.g. a single ring) or no try
    gives a molecule RDKit accepts.

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> g = torch.Generator().manual_seed(0)
        >>> child = brics_crossover("CCOC(=O)c1ccccc1", "CN1CCC(Nc2ccccc2)CC1", g) if rdkit_available() else "C"
        >>> isinstance(child, str)
        True
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        m1, m2 = Chem.MolFromSmiles(parent1), Chem.MolFromSmiles(parent2)
        if m1 is None or m2 is None:
            return None
        for _ in range(tries):
            a, b = _piece(m1, generator, larger=True), _piece(m2, generator, larger=None)
            if a is None or b is None:
                return None
            child = _join(a, b)
            if child is not None:
                smi = Chem.MolToSmiles(child)
                if Chem.MolFromSmiles(smi) is not None:
                    return smi
    return None


_ELEMENTS = (6, 7, 8, 16, 9, 17)  # C N O S F Cl
_ADDED = (6, 7, 8, 9)


def _mutate_once(mol, generator: torch.Generator | None):
    from rdkit import Chem

    rw = Chem.RWMol(mol)
    Chem.Kekulize(rw, clearAromaticFlags=True)
    move = _randint(generator, 3)
    n = rw.GetNumAtoms()
    if move == 0:  # change an atom's element
        atom = rw.GetAtomWithIdx(_randint(generator, n))
        atom.SetAtomicNum(_ELEMENTS[_randint(generator, len(_ELEMENTS))])
        atom.SetFormalCharge(0)
        atom.SetNumExplicitHs(0)
        atom.SetNoImplicit(False)
    elif move == 1:  # add a terminal atom to an atom that has a hydrogen
        hosts = [a.GetIdx() for a in rw.GetAtoms() if a.GetTotalNumHs() > 0]
        if not hosts:
            return None
        host = hosts[_randint(generator, len(hosts))]
        new = rw.AddAtom(Chem.Atom(_ADDED[_randint(generator, len(_ADDED))]))
        rw.AddBond(host, new, Chem.BondType.SINGLE)
    else:  # remove a terminal atom
        ends = [a.GetIdx() for a in rw.GetAtoms() if a.GetDegree() == 1]
        if not ends or n < 2:
            return None
        end = ends[_randint(generator, len(ends))]
        nbr = rw.GetAtomWithIdx(end).GetNeighbors()[0]
        nbr.SetNumExplicitHs(0)
        nbr.SetNoImplicit(False)
        rw.RemoveAtom(end)
    try:
        out = rw.GetMol()
        Chem.SanitizeMol(out)
    except Exception:  # any sanitisation error: this move gives no molecule
        return None
    return out


def mutate(smiles: str, generator: torch.Generator | None = None, *, tries: int = 20) -> str | None:
    """A mutant of ``smiles`` by one RDKit graph move (element change, atom addition, atom removal).

    The move is retried (up to ``tries`` times) until RDKit sanitises the result and it differs from the
    parent; returns the canonical SMILES, or None when no try succeeds (or the parent is invalid).

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> child = mutate("CCOc1ccccc1", torch.Generator().manual_seed(0)) if rdkit_available() else "C"
        >>> isinstance(child, str)
        True
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            return None
        parent = Chem.MolToSmiles(mol)
        for _ in range(tries):
            out = _mutate_once(mol, generator)
            if out is None:
                continue
            smi = Chem.MolToSmiles(out)
            if smi != parent and "." not in smi and Chem.MolFromSmiles(smi) is not None:
                return smi
    return None


def encode_prompts(
    smiles: Sequence[str | None],
    vocab: Vocabulary,
    length: int,
    noise: Tensor,
) -> tuple[Tensor, int]:
    """Offspring SMILES as the flow's starting tokens ``x0: (n, L)``: each encodable SMILES (with its ``<pad>``
    tail, cut at ``L`` tokens) overwrites its row of ``noise`` (the source draw, ``(n, L)``); a None or a SMILES
    with a token outside the run's vocabulary keeps its noise row. Returns ``(x0, number of prompted rows)``.

    Example:
        >>> v = Vocabulary(["C", "O"])
        >>> x0, k = encode_prompts(["CO", None, "CCCCCC"], v, 4, torch.full((3, 4), 9))
        >>> x0.tolist(), k
        ([[1, 2, 0, 0], [9, 9, 9, 9], [1, 1, 1, 1]], 2)
    """
    if noise.shape != (len(smiles), length):
        raise ValueError(
            f"noise must have shape (n, L) = ({len(smiles)}, {length}), got {tuple(noise.shape)}"
        )
    x0 = noise.clone()
    prompted = 0
    for i, s in enumerate(smiles):
        if not s:
            continue
        try:
            ids = vocab.tokenize(s)
        except ValueError:
            continue
        ids = (ids + [vocab.pad_id] * length)[:length]
        x0[i] = torch.tensor(ids, dtype=x0.dtype, device=x0.device)
        prompted += 1
    return x0, prompted
