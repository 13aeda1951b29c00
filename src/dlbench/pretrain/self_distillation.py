"""Self-distillation and redundancy-reduction methods: BYOL, SimSiam, Barlow Twins, VICReg, DINO.

No negatives: two views of an image must agree, and collapse is prevented by asymmetry
(predictor + stop-gradient, momentum teacher, centring/sharpening) or by a regulariser on
the embedding statistics. Losses come from ``dlbench.pretrain.losses``; the momentum
teacher, step counter and multi-crop helpers (``dlbench.pretrain.components``) are shared with
``contrastive``.

Defaults are scaled from the papers (ImageNet, 224 px, batch 256-4096, 100-1000 epochs)
to 32 px images, ~8000 unlabeled images and a few CPU epochs; each class says what.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.pretrain import losses
from dlbench.pretrain.base import PretrainMethod, PretrainSetup, mlp, register_method
from dlbench.pretrain.components import (MomentumTeacher, MultiCrop, StepCounter, cosine_momentum, encode_views,
                                         multicrop_config)
from dlbench.pretrain.views import make_view
from dlbench.train.engine import Batch

Stats = dict[str, torch.Tensor]


def _two_views(method: PretrainMethod, images: torch.Tensor, gen: torch.Generator,
               solarize_p: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's two views; ``solarize_p`` (if given) on the second one only, as BYOL's recipe."""
    cfg = method.setup.views
    second = cfg if solarize_p is None else cfg.with_(solarize_p=float(solarize_p))
    return make_view(images, cfg, gen), make_view(images, second, gen)


def _embedding_std(z: torch.Tensor) -> torch.Tensor:
    """SimSiam's collapse monitor: mean per-dimension std of l2-normalised outputs (0 = collapsed)."""
    return F.normalize(z.detach().float(), dim=1).std(0).mean()


# --------------------------------------------------------------------------- BYOL


@register_method("byol", family="self_distillation")
class BYOL(PretrainMethod):
    """BYOL (Grill et al. 2020): online (backbone, projector, predictor) regresses a momentum target.

    The target is a :class:`MomentumTeacher` of backbone + projector; its momentum follows
    ``cosine_momentum`` from ``base_momentum`` to 1 over training (updated in ``after_step``).
    Loss: ``byol_loss(p1, t2) + byol_loss(p2, t1)`` (the paper's symmetrised sum). The second
    view is solarised with probability ``solarize_p`` (paper: 0.0 / 0.2 for the two views);
    Gaussian blur is not in the view pipeline (at 32 px it is usually dropped, e.g. solo-learn's
    CIFAR recipes).

    Scaled: base momentum 0.99 (paper 0.996, too slow to move for a few hundred steps; the embedded
    default config's 186 steps use 0.9, selected on val); projector / predictor hidden 1024 (paper
    4096) -> 256 as in the paper.
    """

    defaults: ClassVar[dict[str, Any]] = {"proj_hidden": 1024, "proj_dim": 256, "pred_hidden": 1024,
                                          "base_momentum": 0.99, "solarize_p": 0.2}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        p = self.params
        self.projector = mlp(self.feature_dim, p["proj_hidden"], p["proj_dim"])
        self.predictor = mlp(p["proj_dim"], p["pred_hidden"], p["proj_dim"])
        self.target = MomentumTeacher(self.backbone, self.projector)
        self.model["projector"] = self.projector
        self.model["predictor"] = self.predictor
        self.model["target"] = self.target
        self.momentum = float(p["base_momentum"])

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        images = batch.images
        v1, v2 = _two_views(self, images, gen, self.params["solarize_p"])
        p1 = self.predictor(self.projector(self.encode(v1)))
        p2 = self.predictor(self.projector(self.encode(v2)))
        t1, t2 = self.target(v1), self.target(v2)
        loss = losses.byol_loss(p1, t2) + losses.byol_loss(p2, t1)
        return loss, {}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.momentum = cosine_momentum(float(self.params["base_momentum"]), step, total_steps)
        self.target.update(self.backbone, self.projector, self.momentum)


# --------------------------------------------------------------------------- SimSiam


@register_method("simsiam", family="self_distillation")
class SimSiam(PretrainMethod):
    """SimSiam (Chen & He 2021): BYOL without the momentum encoder; stop-gradient alone avoids collapse.

    Projector: 3 layers with BN on the output (the paper's ImageNet head); predictor: a
    bottleneck MLP (out -> out/4 -> out). Loss ``(D(p1, z2) + D(p2, z1)) / 2`` with
    ``D = neg_cosine`` (stop-gradient on z). Stat ``z_std``: the paper's collapse monitor.

    Scaled: widths 512 / bottleneck 128 (paper 2048 / 512).
    """

    defaults: ClassVar[dict[str, Any]] = {"proj_hidden": 512, "proj_dim": 512, "pred_hidden": 128}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        p = self.params
        self.projector = mlp(self.feature_dim, p["proj_hidden"], p["proj_dim"], layers=3, last_bn=True)
        self.predictor = mlp(p["proj_dim"], p["pred_hidden"], p["proj_dim"])
        self.model["projector"] = self.projector
        self.model["predictor"] = self.predictor

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        images = batch.images
        v1, v2 = _two_views(self, images, gen)
        z1, z2 = self.projector(self.encode(v1)), self.projector(self.encode(v2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (losses.neg_cosine(p1, z2) + losses.neg_cosine(p2, z1))
        return loss, {"z_std": _embedding_std(z1)}


# --------------------------------------------------------------------------- Barlow Twins


@register_method("barlow_twins", family="self_distillation")
class BarlowTwins(PretrainMethod):
    """Barlow Twins (Zbontar et al. 2021): cross-correlation of the two views' embeddings -> identity.

    Projector: 3 layers (Linear-BN-ReLU x 2, Linear) as in the paper; the loss standardises
    each dimension over the batch. Scaled: width 512 (paper 8192; the off-diagonal weight
    5e-3 stays near the paper's 5.1e-3, which the paper found robust across widths; the embedded
    default config uses 1e-2, best on val by a margin within seed noise).
    """

    defaults: ClassVar[dict[str, Any]] = {"proj_hidden": 512, "proj_dim": 512, "lambda_offdiag": 5e-3}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        p = self.params
        self.projector = mlp(self.feature_dim, p["proj_hidden"], p["proj_dim"], layers=3)
        self.model["projector"] = self.projector

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        images = batch.images
        v1, v2 = _two_views(self, images, gen)
        z1, z2 = self.projector(self.encode(v1)), self.projector(self.encode(v2))
        loss = losses.barlow_twins_loss(z1, z2, lambda_offdiag=self.params["lambda_offdiag"])
        return loss, {}


# --------------------------------------------------------------------------- VICReg


@register_method("vicreg", family="self_distillation")
class VICReg(PretrainMethod):
    """VICReg (Bardes et al. 2022): invariance + variance hinge + covariance decorrelation.

    Expander: 3 layers (Linear-BN-ReLU x 2, Linear); coefficients 25 / 25 / 1 as in the paper.
    Stats: the three unweighted terms. Scaled: width 512 (paper 8192).
    """

    defaults: ClassVar[dict[str, Any]] = {"proj_hidden": 512, "proj_dim": 512, "sim_coeff": 25.0,
                                          "std_coeff": 25.0, "cov_coeff": 1.0}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        p = self.params
        self.expander = mlp(self.feature_dim, p["proj_hidden"], p["proj_dim"], layers=3)
        self.model["expander"] = self.expander

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        images = batch.images
        v1, v2 = _two_views(self, images, gen)
        z1, z2 = self.expander(self.encode(v1)), self.expander(self.encode(v2))
        p = self.params
        loss, parts = losses.vicreg_loss(z1, z2, sim_coeff=p["sim_coeff"], std_coeff=p["std_coeff"],
                                         cov_coeff=p["cov_coeff"])
        return loss, {k: v.detach() for k, v in parts.items()}


# --------------------------------------------------------------------------- DINO


class DINOHead(nn.Module):
    """DINO's projection head: MLP (GELU, no BN) -> bottleneck -> l2-norm -> weight-normalised
    linear layer onto K prototypes, with the weight-norm gain fixed to 1 (``norm_last_layer``).

    The paper's head, not ``mlp()``: GELU without BN and the normalised last layer are part
    of what keeps DINO stable.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, layers: int = 3) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last = nn.Linear(bottleneck, out_dim, bias=False)  # its rows are the direction v of weight norm
        self.freeze_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x).float(), dim=-1)
        w = F.normalize(self.last.weight.float(), dim=1)
        return F.linear(x, w.detach() if self.freeze_last else w)


@register_method("dino", family="self_distillation")
class DINO(MultiCrop, PretrainMethod):
    """DINO (Caron et al. 2021): a student matches the centred, sharpened outputs of a momentum teacher.

    Student = backbone + :class:`DINOHead` on all views (2 global + ``local_crops`` small
    ones, the second global view solarised with ``solarize_p``); teacher = a
    :class:`MomentumTeacher` copy on the global views only, momentum ``cosine_momentum``
    from ``base_momentum``. The center (a buffer) is updated in ``after_step`` from the
    teacher outputs of the step with ``dino_center_update`` (no gradient can flow through it).
    The teacher temperature rises linearly from ``warmup_teacher_temp`` to ``teacher_temp``
    over the first ``warmup_teacher_temp_epochs`` (None: 30% of training; the paper warms up
    over 30 epochs of 100-800, too long a share to copy for runs of a few epochs, so the
    fraction of its 100-epoch runs is kept); the prototypes layer is frozen for ``freeze_last_layer_steps`` (None: one
    epoch, as the paper). The step count lives in a buffer, so both schedules survive resume.
    Not reproduced: gradient clipping and the weight-decay schedule (the engine's optimiser).

    Scaled: head hidden 512 / bottleneck 128 / 1024 prototypes (paper 2048 / 256 / 65536);
    base momentum 0.99 (paper 0.996; the embedded default config's 186 steps use 0.9, selected
    on val); multi-crop 2 x 32 px + 2 x 16 px (paper 2 x 224 + 8-10 x 96); temperatures 0.1 (student), 0.04 -> 0.07 (teacher), center momentum 0.9 as
    in the paper.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "head_hidden": 512, "bottleneck": 128, "out_dim": 1024, "student_temp": 0.1, "teacher_temp": 0.07,
        "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": None, "base_momentum": 0.99,
        "center_momentum": 0.9, "freeze_last_layer_steps": None, "local_crops": 2, "local_size": None,
        "solarize_p": 0.2,
    }

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        p = self.params
        self.head = DINOHead(self.feature_dim, int(p["out_dim"]), int(p["head_hidden"]), int(p["bottleneck"]))
        self.teacher = MomentumTeacher(self.backbone, self.head)
        self.counter = StepCounter()
        state = nn.Module()
        state.register_buffer("center", torch.zeros(1, int(p["out_dim"])))
        self.state = state
        self.model["head"] = self.head
        self.model["teacher"] = self.teacher
        self.model["counter"] = self.counter
        self.model["center"] = state
        self.views = multicrop_config(setup, self.backbone, p["local_crops"], p["local_size"])
        warm_epochs = 0.3 * setup.epochs if p["warmup_teacher_temp_epochs"] is None else p["warmup_teacher_temp_epochs"]
        self.warmup_steps = min(int(round(float(warm_epochs) * setup.steps_per_epoch)),
                                setup.epochs * setup.steps_per_epoch)
        freeze = p["freeze_last_layer_steps"]
        self.freeze_last_steps = int(setup.steps_per_epoch if freeze is None else freeze)
        self.momentum = float(p["base_momentum"])
        self._teacher_out: torch.Tensor | None = None

    def teacher_temperature(self, step: int) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` (step 0) to ``teacher_temp`` (step >= warm-up)."""
        lo, hi = float(self.params["warmup_teacher_temp"]), float(self.params["teacher_temp"])
        if step >= self.warmup_steps:
            return hi
        return lo + (hi - lo) * step / self.warmup_steps

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        images = batch.images
        step = self.counter.value
        p = self.params
        cfg = self.views
        views = [make_view(images, cfg, gen), make_view(images, cfg.with_(solarize_p=float(p["solarize_p"])), gen)]
        views += [make_view(images, cfg, gen, size=cfg.local_size, scale=cfg.local_scale)
                  for _ in range(cfg.local_crops)]
        self.head.freeze_last = step < self.freeze_last_steps
        student = [self.head(f) for f in encode_views(self.encode, views)]
        teacher = self.teacher(torch.cat(views[:2])).float()
        temp = self.teacher_temperature(step)
        loss = losses.dino_loss(student, list(teacher.chunk(2)), self.state.center,
                                student_temp=p["student_temp"], teacher_temp=temp)
        self._teacher_out = teacher.detach()
        with torch.no_grad():  # the teacher's sharpness: entropy of its centred output (-> 0 at collapse)
            probs = F.softmax((teacher - self.state.center) / temp, dim=-1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean()
        return loss, {"teacher_temp": torch.tensor(temp, device=loss.device), "teacher_entropy": entropy}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.momentum = cosine_momentum(float(self.params["base_momentum"]), step, total_steps)
        self.teacher.update(self.backbone, self.head, self.momentum)
        if self._teacher_out is not None:
            center = self.state.center
            center.copy_(losses.dino_center_update(center, self._teacher_out, float(self.params["center_momentum"])))
            self._teacher_out = None
        self.counter.set(step + 1)
