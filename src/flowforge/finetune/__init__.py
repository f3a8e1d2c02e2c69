"""Fine-tuning methods built on the families (one method a file).

============================================  ===================  ==============================================
method                                        file                 what it does
============================================  ===================  ==============================================
:class:`DiscretePPO` (InVirtuoGen)            ``discrete_ppo.py``  clipped PPO on a discrete flow's posterior
:func:`sequence_log_prob`                     ``discrete_ppo.py``  the PPO log-probability surrogate
:class:`DanceGRPO` (+ REINFORCE switch)       ``dance_grpo.py``    GRPO through a marginal-preserving SDE
:class:`ORWCFM` (ORW-CFM-W2)                  ``orw_cfm.py``       reward-weighted CFM + W2 to the reference
:class:`ACFlow` (AC-Flow-style, derived)      ``ac_flow.py``       critic-weighted CFM, clipping, warm-up
:class:`FMMLE`, :class:`ContractiveResidual`  ``fm_mle.py``        reconstruction NLL through the N-step solver
:class:`ModePreference`, :class:`HalfPlane`   ``rewards.py``       2-D rewards; :func:`total_reward` checks, sums
:class:`ClassifierReward`                     ``rewards.py``       images: a classifier's p(target class)
:class:`StrokeThickness`                      ``rewards.py``       images: share of ink (mean or soft area)
============================================  ===================  ==============================================

Layer: ``finetune`` may import ``core``, ``nn`` and the families (here ``discrete``; the continuous
fine-tuners need only a model with ``velocity(x, t, **cond)``).
"""

from flowforge.finetune.ac_flow import ACFlow, shape_rewards
from flowforge.finetune.dance_grpo import (
    DanceGRPO,
    SDERollout,
    gaussian_log_prob,
    group_advantages,
    sde_rollout,
    sde_step,
    shifted_grid,
)
from flowforge.finetune.discrete_ppo import (
    Corruption,
    DiscretePPO,
    clipped_surrogate,
    corrupt,
    normalized_advantages,
    ppo_times,
    sequence_log_prob,
)
from flowforge.finetune.fm_mle import FMMLE, ContractiveResidual, euler_map, ode_pairs
from flowforge.finetune.orw_cfm import ORWCFM, policy_samples, weighted_cfm_w2_loss
from flowforge.finetune.rewards import (
    ClassifierReward,
    HalfPlane,
    ModePreference,
    Reward,
    StrokeThickness,
    total_reward,
)

__all__ = [
    "ACFlow",
    "ClassifierReward",
    "StrokeThickness",
    "ContractiveResidual",
    "DanceGRPO",
    "FMMLE",
    "HalfPlane",
    "ModePreference",
    "ORWCFM",
    "Reward",
    "SDERollout",
    "euler_map",
    "gaussian_log_prob",
    "group_advantages",
    "ode_pairs",
    "policy_samples",
    "sde_rollout",
    "sde_step",
    "shape_rewards",
    "shifted_grid",
    "total_reward",
    "weighted_cfm_w2_loss",
    "Corruption",
    "DiscretePPO",
    "clipped_surrogate",
    "corrupt",
    "normalized_advantages",
    "ppo_times",
    "sequence_log_prob",
]
