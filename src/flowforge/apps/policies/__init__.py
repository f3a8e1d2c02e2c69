"""One-step robot policies (DM1: MeanFlow with the dispersive regulariser; Zou et al., 2025, arXiv:2510.07865).

===========================================  ==============  ==============================================
part                                         file            what it does
===========================================  ==============  ==============================================
:class:`Reach2D`                             ``reach2d.py``  pure-torch 2-D reaching around an obstacle,
                                                             scripted expert with two equally good routes
:class:`Reacher`, :func:`mujoco_available`   ``reacher.py``  MuJoCo ``Reacher-v5`` (lazy ``gymnasium``),
                                                             inverse-kinematics expert with two elbow signs
:func:`collect_demos`, :func:`rollout`       ``demos.py``    expert demonstrations (action chunks), closed-
                                                             loop rollouts with success rate, latency
:class:`RegressionPolicy`,                   ``policy.py``   the MSE baseline; flow / MeanFlow / MSE models
:class:`ActionSampler`,                                      as ``policy(obs, generator=g)``; embedding
:func:`embedding_stats`                                      spread and effective rank
===========================================  ==============  ==============================================

The observation-conditioned network is :class:`flowforge.nn.ObsMLP`; the flow policies are
:class:`flowforge.continuous.FlowMatching` and :class:`flowforge.continuous.MeanFlow` with ``obs`` as a
condition.
"""

from flowforge.apps.policies.demos import Demonstrations, Rollout, collect_demos, latency, rollout
from flowforge.apps.policies.policy import (
    ActionSampler,
    RegressionPolicy,
    embedding_stats,
    observation_embeddings,
)
from flowforge.apps.policies.reach2d import Reach2D
from flowforge.apps.policies.reacher import Reacher, mujoco_available

__all__ = [
    "ActionSampler",
    "Demonstrations",
    "Reach2D",
    "Reacher",
    "RegressionPolicy",
    "Rollout",
    "collect_demos",
    "embedding_stats",
    "latency",
    "mujoco_available",
    "observation_embeddings",
    "rollout",
]
