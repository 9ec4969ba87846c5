"""Fine-tuning methods for sparse models: NFT, EL, EL+RB and CEAG (ALGORITHM.md).

Every method turns one batch's logits into the differentiable primal loss of a training step::

    method = CEAG(num_groups, dense_stats, tolerance=0.02)      # dense_stats: ceag.metrics
    for inputs, target, group in loader:
        out = method.step(model(inputs), target, group)         # forward once, dual step
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()                                     # one weighted cross-entropy
        optimizer.step()                                        # + re-apply masks, if any

``step`` follows the order of ALGORITHM.md: the fused op's forward; buffer update; dual
step on the *true* violation (only for groups whose estimate is available); the primal
objective rebuilt with the new multipliers. The primal objective of every method is one
per-group weighted cross-entropy, ``loss = Σ_g w_g loss_sum_g`` with

    w_g = (1 − C_B)/N + c_g/n_g   for groups g in the batch (0 otherwise),  C_B = Σ_{g∈B} c_g,

N the batch's sample count and n_g the group's. For CEAG c_g = λ_g, and ``loss`` equals
L_B + Σ_{g∈B} λ_g ψ̃_g up to a constant, ψ̃_g = [L_g,B − L_g(θ_d)] − [L_B − L(θ_d)]. For EL
c_g = λ_g·sign(L_g,B − L_B) (``variant="abs"``) or λ_g (``"signed"``). Its backward is one
sweep of the fused cross-entropy backward over the logits, whatever G; the per-step work of
a constrained method on top of NFT is O(G) vector work (no Python loop over groups).
The weights cannot be handed to the fused op's forward (``group_weight``): dual-first order
needs this batch's correctness before the multipliers, hence the weights, are known. NFT and
inactive methods, whose weights are known up front, do use it (gradient written in the
forward).

The Lagrangian machinery is Cooper's (``cooper-optim`` 1.0): one
:class:`cooper.multipliers.IndexedMultiplier` entry per group in a :class:`cooper.Constraint`
(inequality, or equality for signed EL) of a :class:`cooper.ConstrainedMinimizationProblem`;
each dual step builds a :class:`cooper.ConstraintState` whose ``strict_violation`` /
``strict_constraint_features`` are the observed (available) groups' violations and indices,
computes Cooper's dual Lagrangian, and steps the dual optimizer (``maximize=True``: SGD by
default, Cooper's nuPI on request) followed by the multiplier's ``post_step_`` (projection
onto λ ≥ 0 for inequalities). With SGD this is exactly λ_g ← max(0, λ_g + η_λ (ψ̂_g − ε)).
The multipliers get sparse gradients, so stateful dual optimizers only advance observed
groups.

Weight decay is the primal optimizer's business (``torch.optim.SGD(weight_decay=...)`` over
all trainable parameters): no method adds it to the loss.

Safety of the dual learning rate: once Σ_g λ_g reaches 1 the weight (1 − Λ_B)/N of the
average loss turns negative and the primal step pushes the average loss *up* (ALGORITHM.md,
practical notes: collapse to 25% accuracy at dual lr 5e-2). The default dual lr is 1e-3
(the paper used 1e-4 to 1e-2); a ``RuntimeWarning`` is raised when Σ_g |λ_g| reaches
``multiplier_sum_warning`` (0.8), and ``max_multiplier_sum`` (off by default, as in the
paper) rescales λ after each dual step so that Σ_g λ_g ≤ the given bound (a rescaling, not
the Euclidean projection, which keeps the multipliers' ratios).

Layout: ``base`` (the interface, NFT, the primal weights), ``problem`` (the Cooper problem),
``dual`` (the dual update rules), ``buffers`` (replay-buffer estimates), ``constrained`` (the
step of every constrained method), ``ceag``, ``el`` (EL, EL+RB), ``registry`` (the one list
of methods: :data:`METHODS`, :func:`build_method`).
"""

from ceag.methods.base import NFT, PRIMALS, Method, StepOutput, primal_group_weights
from ceag.methods.buffers import BufferEstimate
from ceag.methods.ceag import CEAG, MULTIPLIER_SCALES
from ceag.methods.constrained import ConstrainedMethod
from ceag.methods.dual import DUAL_OPTIMIZERS, PI
from ceag.methods.el import EL, ELRB
from ceag.methods.problem import GroupConstraintProblem
from ceag.methods.registry import METHODS, MethodSpec, build_method

__all__ = [
    "CEAG",
    "DUAL_OPTIMIZERS",
    "EL",
    "ELRB",
    "METHODS",
    "MULTIPLIER_SCALES",
    "NFT",
    "PI",
    "PRIMALS",
    "BufferEstimate",
    "ConstrainedMethod",
    "GroupConstraintProblem",
    "Method",
    "MethodSpec",
    "StepOutput",
    "build_method",
    "primal_group_weights",
]
