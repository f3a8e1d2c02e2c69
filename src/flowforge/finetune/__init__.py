"""Fine-tuning methods built on the families (one method a file).

=========================================  ======================  ==========================================
method                                     file                    what it does
=========================================  ======================  ==========================================
:class:`DiscretePPO` (InVirtuoGen)         ``discrete_ppo.py``     clipped PPO on a discrete flow's posterior
:func:`sequence_log_prob`                  ``discrete_ppo.py``     the PPO log-probability surrogate
=========================================  ======================  ==========================================

Layer: ``finetune`` may import ``core``, ``nn`` and the families (here ``discrete``).
"""

from flowforge.finetune.discrete_ppo import (
    Corruption,
    DiscretePPO,
    clipped_surrogate,
    corrupt,
    normalized_advantages,
    ppo_times,
    sequence_log_prob,
)

__all__ = [
    "Corruption",
    "DiscretePPO",
    "clipped_surrogate",
    "corrupt",
    "normalized_advantages",
    "ppo_times",
    "sequence_log_prob",
]
