"""CLIP: the open_clip backbone source (inline config, real weights by name + file), offline tokenization,
the zero-shot head, CLIP pretraining, fine-tuning from the zero-shot head, WiSE-FT, and their lineage."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dlbench.adapt.clip import interpolate
from dlbench.adapt.lora import LORA
from dlbench.adapt.lipsum import LIPSUM, LipsumObjective, lipsum_regulariser, random_tokens
from dlbench.adapt.run import adapt
from dlbench.config import ConfigError, check
from dlbench.data.augment import AugmentConfig
from dlbench.data.loader import load_tensors
from dlbench.data.shapes import build as build_shapes
from dlbench.models.backbones import Classifier, build_backbone
from dlbench.models.checkpoint import WEIGHTS, load_backbone, load_model
from dlbench.models.clip import CosineHead, OpenClipNet, tokenize, zeroshot_weights
from dlbench.models.inference import predict_logits
from dlbench.models.sources import BackboneSpecError, check_spec
from dlbench.pretrain.language_image import clip_loss
from dlbench.pretrain.run import pretrain
from dlbench.train.engine import Batch

from .ssl_helpers import CLIP_SPEC

pytestmark = pytest.mark.usefixtures("one_thread")
TEMPLATES = ["a photo of a {}.", "a {} shape."]
CLASSES = ["circle", "ring", "star"]


def clip_backbone(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(CLIP_SPEC, (32, 32))


# ---- the source ---------------------------------------------------------------------------------

def test_open_clip_backbone_carries_clip_preprocessing_and_freezes_the_text_tower():
    import open_clip

    b = clip_backbone()
    assert isinstance(b.net, OpenClipNet)
    assert b.input_size == (32, 32) and b.fixed_size  # the ViT's position grid
    assert tuple(b.mean.flatten().tolist()) == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert tuple(b.std.flatten().tolist()) == pytest.approx(open_clip.OPENAI_DATASET_STD)
    assert b.num_features == 16  # the joint embedding width
    trainable = {n for n, p in b.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("net.clip.visual.") for n in trainable)
    x = torch.rand(2, 3, 32, 32)
    # the backbone normalises with CLIP's statistics, then runs the image tower
    expected = b.net.clip.encode_image((x - b.mean) / b.std)
    assert torch.equal(b(x), expected)


@pytest.mark.parametrize("spec, match", [
    ({"source": "open_clip"}, "either `model`"),
    ({"source": "open_clip", "model": "ViT-B-32", "config": CLIP_SPEC["config"]}, "not both"),
    ({"source": "open_clip", "model": "no-such-clip"}, r"backbones\.c\.model: unknown open_clip model"),
    ({"source": "open_clip", "config": {**CLIP_SPEC["config"], "widht": 3}}, r"backbones\.c\.config\.widht"),
    ({"source": "open_clip", "config": {"embed_dim": 8}}, r"backbones\.c\.config\.vision_cfg is required"),
    ({"source": "open_clip", "model": "ViT-B-32", "cifar_stem": True}, r"backbones\.c\.cifar_stem"),
    ({"source": "timm", "model": "resnet18", "config": {}}, r"backbones\.c\.config: only open_clip"),
])
def test_bad_open_clip_specs_fail_naming_the_key(spec, match):
    with pytest.raises(BackboneSpecError, match=match):
        check_spec("c", spec)


@pytest.fixture()
def tiny_named_model(tmp_path):
    """A small open_clip model registered by name (open_clip.add_model_config), as a real model would be."""
    import open_clip

    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "dlbench-test-tiny-quickgelu.json").write_text(json.dumps({**CLIP_SPEC["config"], "quick_gelu": True}))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(3)
    model = open_clip.create_model("dlbench-test-tiny-quickgelu", pretrained=None)
    return "dlbench-test-tiny-quickgelu", model


@pytest.mark.parametrize("fmt", ["safetensors", "open_clip_checkpoint"])
def test_real_weights_load_by_name_and_file_with_identical_outputs(tiny_named_model, tmp_path, fmt):
    """The real-weights path: an open_clip model saved as a file (safetensors, or open_clip's training
    checkpoint: {"state_dict": ...} with DDP's "module." prefix) loads back by name + path, same outputs."""
    from safetensors.torch import save_file

    name, model = tiny_named_model
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    spec = {"source": "open_clip", "model": name, "weights": str(path)}
    check_spec("real", spec)
    b = build_backbone(spec)
    assert b.net.clip.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    model.eval(), b.eval()
    # the same execution path on both sides: torch's attention takes a different (equally valid, not
    # bit-identical) kernel when parameters require grad, and dlbench freezes the text tower
    for p in [*model.parameters(), *b.parameters()]:
        p.requires_grad_(False)
    x = torch.rand(3, 3, 32, 32)
    tokens = tokenize(b.net, spec, ["a red star", "a circle"])
    with torch.no_grad():
        assert torch.equal(b.net(x), model.encode_image(x))
        assert torch.equal(b.net.encode_text(tokens), model.encode_text(tokens))
    assert torch.equal(b.net.clip.logit_scale, model.logit_scale)


def test_weights_that_do_not_fit_fail_naming_the_file(tiny_named_model, tmp_path):
    from safetensors.torch import save_file

    name, model = tiny_named_model
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("visual.proj")}
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(BackboneSpecError, match="bad.safetensors: weights do not fit"):
        build_backbone({"source": "open_clip", "model": name, "weights": str(tmp_path / "bad.safetensors")})


def test_tokenization_needs_no_network(monkeypatch):
    """open_clip's bundled BPE: CLIP's token ids, with every socket refused."""
    def refuse(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    b = clip_backbone()
    tokens = tokenize(b.net, CLIP_SPEC, ["a photo of a cat", ""])
    assert tokens.shape == (2, 16) and tokens.dtype == torch.int64
    assert tokens[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]  # <start> a photo of a cat <end>
    assert tokens[1, :2].tolist() == [49406, 49407] and not tokens[0, 7:].any()


# ---- zero-shot head -----------------------------------------------------------------------------

def test_zeroshot_head_equals_a_hand_computation():
    import open_clip

    b = clip_backbone()
    clip = b.net.clip.eval()
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    expected = []
    with torch.no_grad():
        for c in CLASSES:  # per prompt: embed, l2-normalise; mean over prompts; normalise again
            emb = clip.encode_text(tok([t.format(c) for t in TEMPLATES]))
            mean = (emb / emb.norm(dim=-1, keepdim=True)).mean(0)
            expected.append(mean / mean.norm())
    expected = torch.stack(expected)
    weights = zeroshot_weights(b.net, CLIP_SPEC, CLASSES, TEMPLATES)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=0)
    scale = float(clip.logit_scale.exp())
    head = CosineHead.from_class_embeddings(weights, scale)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        img = clip.encode_image(b.normalize(x))
        by_hand = scale * (img / img.norm(dim=-1, keepdim=True)) @ expected.T  # CLIP's logits
        torch.testing.assert_close(Classifier(b, 3, head).eval()(x), by_hand, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prompt templates"):
        zeroshot_weights(b.net, CLIP_SPEC, CLASSES, [])


def test_clip_loss_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    scale = torch.tensor(10.0)
    s = 10 * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    lse_rows, lse_cols = s.logsumexp(1), s.logsumexp(0)
    by_hand = ((lse_rows - s.diag()).mean() + (lse_cols - s.diag()).mean()) / 2
    torch.testing.assert_close(clip_loss(img, txt, scale), by_hand)


# ---- WiSE-FT --------------------------------------------------------------------------------------

def test_wiseft_ends_are_exactly_the_endpoints_and_the_middle_is_the_mean():
    b = clip_backbone()
    zs = Classifier(b, 3, CosineHead.from_class_embeddings(zeroshot_weights(b.net, CLIP_SPEC, CLASSES, TEMPLATES),
                                                         float(b.net.logit_scale))).eval()
    ft = Classifier(clip_backbone(seed=1), 3, CosineHead(16, 3)).eval()
    x = torch.rand(5, 3, 32, 32)
    mixed = Classifier(clip_backbone(seed=2), 3, CosineHead(16, 3)).eval()
    with torch.no_grad():
        for alpha, ref in ((0.0, zs), (1.0, ft)):
            mixed.load_state_dict(interpolate(zs, ft, alpha))
            assert torch.equal(mixed(x), ref(x)), alpha
        mixed.load_state_dict(interpolate(zs, ft, 0.5))
    sa, sb, sm = zs.state_dict(), ft.state_dict(), mixed.state_dict()
    for k in sm:
        torch.testing.assert_close(sm[k], (sa[k] + sb[k]) / 2)
    with pytest.raises(ValueError, match="differ in structure"):
        interpolate(zs, torch.nn.Linear(2, 2), 0.5)


# ---- the stages end to end on tiny shapes -----------------------------------------------------------

SIZES = {"unlabeled": 16, "train": 40, "val": 20, "test": 20, "style": 20, "web": 96}
PRE = "shapes/clip/clip/none/none/none/seed0"
TRAIN = {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 0, "amp": False}


def mid(adapt_slot: str) -> str:
    return f"shapes/clip/clip/{adapt_slot}/none/none/seed0"


def adapt_recipe(variant: str, kind: str, params: dict, source: str, knobs: dict | None = None) -> dict:
    return {"id": mid(variant), "kind": kind, "variant": variant, "dataset": "shapes", "seed": 0,
            "train_split": "train", "val_split": "val", "params": params, "knobs": knobs or {}, "source": source}


@pytest.fixture(scope="module")
def clip_world(tmp_path_factory):
    """Tiny shapes with its web split; CLIP pretrained 1 epoch; zero-shot + linear probe (one frozen job);
    a fine-tune from the zero-shot head; WiSE-FT at α 0, 0.5, 1."""
    tmp = tmp_path_factory.mktemp("clip")
    data = tmp / "data"
    build_shapes(data / "shapes", sizes=SIZES)
    recipe = {"id": PRE, "kind": "clip", "variant": "clip", "dataset": "shapes", "backbone": "clip",
              "backbone_spec": CLIP_SPEC, "seed": 0, "unlabeled_split": "unlabeled", "train_split": "train",
              "val_split": "val", "train": {**TRAIN, "epochs": 2}, "views": {}, "params": {}, "knobs": {}}
    models = tmp / "models"
    quiet = {"device": "cpu", "log": lambda s: None}
    card = pretrain(recipe, data, models / PRE, device="cpu")
    frozen = [adapt_recipe("zeroshot", "zeroshot", {}, PRE),
              adapt_recipe("linear", "linear", {"weight_decays": [1e-2], "max_iter": 50, "fraction": 1.0}, PRE)]
    adapt(frozen, models / PRE, data, [models / mid("zeroshot"), models / mid("linear")], **quiet)
    ft = adapt_recipe("finetune", "finetune", {"train": TRAIN, "augment": {}, "label_smoothing": 0.0, "fraction": 1.0},
                      mid("zeroshot"))
    adapt([ft], models / mid("zeroshot"), data, [models / mid("finetune")], **quiet)
    for a in (0.0, 0.5, 1.0):
        name = f"wiseft-alpha{a:g}"
        adapt([adapt_recipe(name, "wiseft", {"alpha": a}, mid("finetune"), {"alpha": a})],
              models / mid("finetune"), data, [models / mid(name)], **quiet)
    lip = adapt_recipe("lipsum", "lipsum", {**ft["params"], **LIPSUM}, mid("zeroshot"))
    adapt([lip], models / mid("zeroshot"), data, [models / mid("lipsum")], **quiet)
    adapt([adapt_recipe("wiseft_lipsum", "wiseft", {"alpha": 1.0}, mid("lipsum"), {"alpha": 1.0})],
          models / mid("lipsum"), data, [models / mid("wiseft_lipsum")], **quiet)
    lora = adapt_recipe("lora", "lora", {**ft["params"], **LORA, "train_head": True, "train": {**TRAIN, "lr": 1e-2}},
                        mid("zeroshot"),
                        {"rank": 8})
    adapt([lora], models / mid("zeroshot"), data, [models / mid("lora")], **quiet)
    peft_params = {**ft["params"], "train_head": True, "train": {**TRAIN, "lr": 1e-2}}
    for name, extra in (("vpt", {"prompts": 4, "deep": False}), ("adapter", {"bottleneck": 4})):
        adapt([adapt_recipe(name, name, {**peft_params, **extra}, mid("zeroshot"))], models / mid("zeroshot"), data,
              [models / mid(name)], **quiet)
    adapt([adapt_recipe("flyp", "flyp", ft["params"], mid("zeroshot"))], models / mid("zeroshot"), data,
          [models / mid("flyp")], **quiet)
    adapt([adapt_recipe("wiseft_flyp", "wiseft", {"alpha": 0.5}, mid("flyp"), {"alpha": 0.5})],
          models / mid("flyp"), data, [models / mid("wiseft_flyp")], **quiet)
    return {"data": data, "models": models, "pretrain_card": card}


def test_clip_pretraining_trains_both_towers_on_the_web_captions(clip_world):
    card = clip_world["pretrain_card"]
    assert card["kind"] == "clip" and card["family"] == "language-image"
    hist = json.loads((clip_world["models"] / PRE / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert all("train_logit_scale" in h and "val_emb_std_norm" in h for h in hist)
    torch.manual_seed(0)
    init = build_backbone(CLIP_SPEC, (32, 32))
    trained, _ = load_backbone(clip_world["models"] / PRE)
    changed = {n for n, v in trained.state_dict().items() if not torch.equal(v, init.state_dict()[n])}
    assert any(n.startswith("net.clip.visual.") for n in changed)
    assert any(n.startswith("net.clip.transformer.") for n in changed)  # the text tower trained too
    assert "net.clip.logit_scale" in changed
    n_all = sum(p.numel() for p in init.parameters())
    assert card["trainable_params"] == n_all  # both towers and the scale


def test_zeroshot_model_is_clip_and_loads_from_its_directory(clip_world):
    models, data = clip_world["models"], clip_world["data"]
    zs, card = load_model(models / mid("zeroshot"))
    assert card["kind"] == "zeroshot" and card["parents"] == [PRE] and card["trainable_params"] == 0
    assert card["model"]["head"] == {"kind": "cosine"} and card["info"]["templates"] == 5
    backbone, _ = load_backbone(models / PRE)
    from dlbench.data.shapes import CLASSES as SHAPES, PROMPT_TEMPLATES

    weights = zeroshot_weights(backbone.net, CLIP_SPEC, SHAPES, PROMPT_TEMPLATES)
    torch.testing.assert_close(zs.head.weight, weights * float(backbone.net.logit_scale), atol=1e-6, rtol=0)
    assert torch.equal(zs.head.bias, torch.zeros(10))
    x, _, _ = load_tensors(data, "shapes", "test")
    assert torch.isfinite(predict_logits(zs, x)).all()


def test_finetune_of_zeroshot_starts_from_its_head_and_lists_it_as_parent(clip_world):
    models = clip_world["models"]
    ft, card = load_model(models / mid("finetune"))
    zs, zcard = load_model(models / mid("zeroshot"))
    assert card["parents"] == [mid("zeroshot")] and card["model"]["head"] == {"kind": "cosine"}
    assert card["trainable_params"] == sum(p.numel() for n, p in ft.named_parameters()
                                           if n.startswith(("backbone.net.clip.visual.", "head.")))
    # the text tower never trains in image classification
    text = [n for n in ft.state_dict() if n.startswith("backbone.net.clip.transformer.")]
    assert text and all(torch.equal(ft.state_dict()[n], zs.state_dict()[n]) for n in text)
    assert not torch.equal(ft.head.weight, zs.head.weight)  # it trained from there


def test_wiseft_models_are_the_endpoints_at_0_and_1_with_both_parents(clip_world):
    models, data = clip_world["models"], clip_world["data"]
    x, _, _ = load_tensors(data, "shapes", "test")
    zs, zcard = load_model(models / mid("zeroshot"))
    ft, fcard = load_model(models / mid("finetune"))
    logits = {}
    for a in (0.0, 0.5, 1.0):
        m, card = load_model(models / mid(f"wiseft-alpha{a:g}"))
        assert card["kind"] == "wiseft" and card["knobs"] == {"alpha": a}
        assert card["parents"] == [mid("zeroshot"), mid("finetune")]  # θ = (1-α)·parents[0] + α·parents[1]
        # each ancestor's training counted once (the pretraining is shared by both parents)
        assert set(card["lineage_seconds"]) == {PRE, mid("zeroshot"), mid("finetune"), card["id"]}
        assert card["total_train_seconds"] == pytest.approx(fcard["total_train_seconds"] + card["train_seconds"])
        logits[a] = predict_logits(m, x)
    assert torch.equal(logits[0.0], predict_logits(zs, x))
    assert torch.equal(logits[1.0], predict_logits(ft, x))
    assert not torch.equal(logits[0.5], logits[0.0]) and not torch.equal(logits[0.5], logits[1.0])
    assert (models / mid("wiseft-alpha0.5") / WEIGHTS).exists()


def test_wiseft_needs_a_classifier_at_both_ends(clip_world, tmp_path):
    """A fine-tune that started from the bare backbone has no head to interpolate with."""
    models, data = clip_world["models"], clip_world["data"]
    ft = adapt_recipe("ft_plain", "finetune", {"train": TRAIN, "augment": {}, "label_smoothing": 0.0,
                                               "fraction": 1.0}, PRE)
    adapt([ft], models / PRE, data, [models / mid("ft_plain")], device="cpu", log=lambda s: None)
    with pytest.raises(ValueError, match="WiSE-FT needs a classifier at both ends"):
        adapt([adapt_recipe("w", "wiseft", {"alpha": 0.5}, mid("ft_plain"))], models / mid("ft_plain"), data,
              [tmp_path / "w"], device="cpu", log=lambda s: None)


def test_lipsum_fine_tunes_from_the_zeroshot_head_and_logs_its_regulariser(clip_world):
    models, data = clip_world["models"], clip_world["data"]
    m, card = load_model(models / mid("lipsum"))
    zs, _ = load_model(models / mid("zeroshot"))
    assert card["kind"] == "lipsum" and card["family"] == "finetune" and card["parents"] == [mid("zeroshot")]
    assert card["model"]["head"] == {"kind": "cosine"} and not torch.equal(m.head.weight, zs.head.weight)
    hist = json.loads((models / mid("lipsum") / "history.json").read_text())
    assert all(h["train_lipsum_reg"] >= 0 and "train_ce" in h for h in hist)
    # a WiSE-FT of Lipsum-FT interpolates with the zero-shot model; α = 1 is Lipsum-FT exactly
    w, wcard = load_model(models / mid("wiseft_lipsum"))
    assert wcard["parents"] == [mid("zeroshot"), mid("lipsum")]
    x, _, _ = load_tensors(data, "shapes", "test")
    assert torch.equal(predict_logits(w, x), predict_logits(m, x))


def test_flyp_trains_both_towers_and_its_head_is_the_zero_shot_head_of_its_text_tower(clip_world):
    from dlbench.data.shapes import CLASSES as SHAPES, PROMPT_TEMPLATES

    models, data = clip_world["models"], clip_world["data"]
    m, card = load_model(models / mid("flyp"))
    zs, _ = load_model(models / mid("zeroshot"))
    assert card["kind"] == "flyp" and card["parents"] == [mid("zeroshot")]
    changed = {n for n, v in m.state_dict().items() if not torch.equal(v, zs.state_dict()[n])}
    assert any(n.startswith("backbone.net.clip.visual.") for n in changed)
    assert any(n.startswith("backbone.net.clip.transformer.") for n in changed)  # the text tower trained
    assert "backbone.net.clip.logit_scale" in changed
    # both towers and the scale count; the head never takes a gradient step
    assert card["trainable_params"] == sum(p.numel() for n, p in m.named_parameters() if not n.startswith("head."))
    net = m.backbone.net
    expected = zeroshot_weights(net, CLIP_SPEC, SHAPES, PROMPT_TEMPLATES) * float(net.logit_scale)
    torch.testing.assert_close(m.head.weight, expected, atol=1e-5, rtol=0)
    assert torch.equal(m.head.bias, torch.zeros(10))
    assert all(not p.requires_grad for p in net.text_parameters())  # saved in the classifier's usual state
    hist = json.loads((models / mid("flyp") / "history.json").read_text())
    assert all(h["train_loss"] > 0 and "train_logit_scale" in h for h in hist)
    w, wcard = load_model(models / mid("wiseft_flyp"))
    assert wcard["parents"] == [mid("zeroshot"), mid("flyp")]
    torch.testing.assert_close(w.head.weight, (zs.head.weight + m.head.weight) / 2)
    x, _, _ = load_tensors(data, "shapes", "test")
    assert torch.isfinite(predict_logits(w, x)).all()


RN_SPEC = {"source": "open_clip", "config": {
    "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}


@pytest.mark.parametrize("spec, targets", [
    (CLIP_SPEC, ["transformer.resblocks.0.attn", "transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.0.mlp.c_proj"]),
    (RN_SPEC, ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3"]),  # first of 12 (4 stages x 3 convs)
])
def test_merged_lora_gives_the_unmerged_logits(spec, targets):
    """Tolerance 1e-5 (float32 reassociation of W x + B A x vs (W + B A) x); LoRA starts at the base model."""
    from dlbench.models.lora import add_lora, lora_targets, merge_lora

    torch.manual_seed(0)
    backbone = build_backbone(spec, (32, 32))
    for name, m in backbone.named_modules():  # open_clip zero-inits each residual branch's last BN: undo it
        if name.endswith("bn3"):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    model = Classifier(backbone, 3, CosineHead(16, 3)).eval()
    x = torch.rand(4, 3, 32, 32)
    base = model(x)
    names = lora_targets(backbone.net.clip.visual)
    assert names[:3] == targets and ".downsample." not in " ".join(names)
    add_lora(backbone.net, {"rank": 2, "lora_alpha": 4.0, "lora_dropout": 0.0})
    assert torch.equal(model(x), base)  # B = 0: the zero-shot model exactly
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    unmerged = model(x)
    assert not torch.allclose(unmerged, base, atol=1e-3)
    merge_lora(backbone.net)
    assert not any("lora" in n for n in model.state_dict())
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)


def test_lora_trains_only_its_adapters_and_the_head_and_saves_merged(clip_world):
    from dlbench.models.lora import lora_targets

    models, data = clip_world["models"], clip_world["data"]
    m, card = load_model(models / mid("lora"))
    zs, _ = load_model(models / mid("zeroshot"))
    targets = lora_targets(zs.backbone.net.clip.visual)
    (transform,) = card["model"]["transforms"]
    assert transform == {"kind": "lora", "merged": True, "rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.0,
                         "targets": targets}
    assert card["kind"] == "lora" and card["family"] == "peft" and card["parents"] == [mid("zeroshot")]
    # by hand: r x (in + out) per target (MHA: its in-projection 3d x d and out-projection d x d), + the head
    d, r = 32, 8
    expected = r * (d + 3 * d) + r * (d + d) + r * (d + 4 * d) + r * (4 * d + d) + zs.head.weight.numel() + 10
    assert card["trainable_params"] == expected
    full = sum(p.numel() for n, p in zs.named_parameters() if n.startswith(("backbone.net.clip.visual.", "head.")))
    assert card["trainable_params"] < 0.25 * full  # (this 1-block, 32-wide tower is far smaller than real ones)
    changed = {n for n, v in m.state_dict().items() if not torch.equal(v, zs.state_dict()[n])}
    prefix = "backbone.net.clip.visual."
    allowed = {f"{prefix}{t}." for t in targets}
    assert changed and all(n.startswith("head.") or any(n.startswith(a) for a in allowed) for n in changed)
    assert any(n.startswith(prefix) for n in changed)  # the merge moved the target weights
    x, _, _ = load_tensors(data, "shapes", "test")
    assert torch.isfinite(predict_logits(m, x)).all()


@pytest.mark.parametrize("kind, own", [("vpt", 4 * 32), ("adapter", 2 * (32 * 4 + 4 + 4 * 32 + 32))])
def test_hand_written_peft_trains_only_its_own_parameters_and_reloads(clip_world, kind, own):
    """VPT (4 shallow prompts of width 32) and adapters (bottleneck 4 after attention and MLP of the one
    block): trainable = own parameters (counted by hand) + head; nothing else moves; rebuilt from the card."""
    models, data = clip_world["models"], clip_world["data"]
    m, card = load_model(models / mid(kind))
    zs, _ = load_model(models / mid("zeroshot"))
    assert card["kind"] == kind and card["family"] == "peft" and card["parents"] == [mid("zeroshot")]
    (transform,) = card["model"]["transforms"]
    assert transform["kind"] == kind
    assert card["trainable_params"] == own + zs.head.weight.numel() + 10
    # the wrapped modules keep their weights under .inner / ln_pre.ln_pre; the rest is the kind's own
    renamed = {n.replace(".inner.", ".").replace("ln_pre.ln_pre.", "ln_pre."): n for n in m.state_dict()}
    extra = {n for z, n in renamed.items() if z not in zs.state_dict()}
    assert extra and all(n.endswith(".prompts") or ".down." in n or ".up." in n for n in extra)
    assert set(zs.state_dict()) <= set(renamed)
    moved = [z for z, n in renamed.items() if z in zs.state_dict() and not torch.equal(m.state_dict()[n],
                                                                                     zs.state_dict()[z])]
    assert moved and all(z.startswith("head.") for z in moved)  # the frozen backbone did not move
    x, _, _ = load_tensors(data, "shapes", "test")
    again, _ = load_model(models / mid(kind))
    assert torch.equal(predict_logits(m, x), predict_logits(again, x))


VIT2_SPEC = {"source": "open_clip", "config": {**CLIP_SPEC["config"], "vision_cfg": {
    **CLIP_SPEC["config"]["vision_cfg"], "layers": 2}}}


def test_deep_vpt_has_prompts_per_block_and_adapters_start_as_the_identity():
    from dlbench.models.prompts import add_adapters, add_prompts

    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    backbone = build_backbone(VIT2_SPEC, (32, 32)).eval()
    base = backbone(x)
    assert add_adapters(backbone.net, 4) == 2 * 2 * (32 * 4 + 4 + 4 * 32 + 32)
    assert torch.equal(backbone(x), base)  # zero-initialised up projections
    deep = build_backbone(VIT2_SPEC, (32, 32)).eval()
    assert add_prompts(deep.net, 3, deep=True) == 3 * 32 * 2
    prompts = [n for n, _ in deep.named_parameters() if n.endswith("prompts")]
    assert len(prompts) == 2 and deep(x).shape == base.shape
    with pytest.raises(ValueError, match="needs a ViT image tower"):
        add_prompts(build_backbone(RN_SPEC, (32, 32)).net, 3, deep=False)


def test_vit_only_peft_on_a_resnet_clip_fails_at_config_time(repo_root):
    cfg = clip_config(repo_root)
    cfg["backbones"]["clip_t"] = RN_SPEC
    cfg["adapt"]["variants"]["vpt"] = {"of": "zeroshot", "pretrain": ["clip"], "train": {"epochs": 1}}
    with pytest.raises(ConfigError, match=r"adapt\.variants\.vpt \(kind vpt\) needs a CLIP with a ViT image tower"):
        check(cfg)
    cfg["backbones"]["clip_t"] = cfg["backbones"]["clip_tiny"] = CLIP_SPEC  # every CLIP run on a ViT tower
    check(cfg)


def test_lipsum_regulariser_equals_a_hand_computation():
    f = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    f0 = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])  # M = 3
    s = 10.0
    # cosines by hand: f̂ = (.6, .8), (1, 0); f̂₀ = (0, 1), (.7071, .7071); t̂ = (1, 0), (0, 1), (.7071, .7071)
    r2 = 0.5 ** 0.5
    gaps = [[s * (0.6 - 0), s * (0.8 - 1), s * ((0.6 + 0.8) * r2 - r2)],
            [s * (1 - r2), s * (0 - r2), s * (r2 - 1)]]
    expected = sum(sum(g * g for g in row) / (2 * 3) for row in gaps) / 2
    assert float(lipsum_regulariser(f, f0, t, s)) == pytest.approx(expected, rel=1e-6)
    assert float(lipsum_regulariser(f, f, t, s)) == 0.0


def test_lipsum_random_texts_sit_between_start_and_end_tokens_and_follow_the_generator():
    a = random_tokens(torch.Generator().manual_seed(3), 80, 8, 49406, 49407, 16)
    b = random_tokens(torch.Generator().manual_seed(3), 80, 8, 49406, 49407, 16)
    assert a.shape == (80, 16) and torch.equal(a, b)
    assert (a[:, 0] == 49406).all() and (a[:, 9] == 49407).all() and (a[:, 10:] == 0).all()
    assert (a[:, 1:9] < 49406).all() and a[:, 1:9].unique().numel() > 500
    with pytest.raises(ValueError, match="context length of at least 10"):
        random_tokens(torch.Generator(), 4, 8, 49406, 49407, 9)


def test_lipsum_regulariser_is_zero_at_initialisation():
    """Fine-tuned tower = zero-shot tower (a ViT: no batch statistics): R = 0 and the loss is the CE."""
    backbone = clip_backbone()
    model = Classifier(backbone, 3, CosineHead(16, 3))
    objective = LipsumObjective(model, AugmentConfig.from_dict({}), 0.0, reference=copy.deepcopy(backbone),
                                tokens={"sot": 49406, "eot": 49407}, weight=1.0, texts=80, text_length=8)
    batch = Batch(images=torch.rand(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0]), indices=torch.arange(4))
    loss, stats = objective.training_loss(batch, torch.Generator().manual_seed(0))
    assert float(stats["lipsum_reg"]) == 0.0 and torch.equal(loss, stats["ce"])
    objective.model.backbone.net.clip.visual.proj.data.mul_(1.5).add_(0.1)  # moved: R > 0
    _, stats = objective.training_loss(batch, torch.Generator().manual_seed(0))
    assert float(stats["lipsum_reg"]) > 0


# ---- config ---------------------------------------------------------------------------------------

def clip_config(repo_root: Path) -> dict:
    import yaml

    cfg = yaml.safe_load((repo_root / "configs" / "smoke.yaml").read_text())
    cfg["backbones"]["clip_t"] = CLIP_SPEC
    cfg["pretrain"]["runs"].append({"dataset": "shapes", "backbone": "clip_t", "variants": ["clip"]})
    cfg["adapt"]["variants"]["zeroshot"] = {"pretrain": ["clip"]}
    return cfg


def test_a_variant_of_a_sweep_makes_one_model_per_point_with_its_knobs(repo_root):
    """WiSE-FT α = .5 of every k-shot fine-tune: ``of`` names the sweep, the plan pairs the points."""
    from dlbench.plan import Plan

    cfg = clip_config(repo_root)
    cfg["adapt"]["variants"]["ft_shots"] = {"kind": "finetune", "of": "zeroshot", "pretrain": ["clip"],
                                            "train": {"epochs": 1, "batch_size": 10}, "sweep": {"shots": [1, 4]}}
    cfg["adapt"]["variants"]["wise_shots"] = {"kind": "wiseft", "of": "ft_shots", "alpha": 0.5, "pretrain": ["clip"]}
    plan = Plan(check(cfg))
    wise = {k: e for k, e in plan.entries.items() if "/wise_shots" in k}
    assert sorted({k.split("/")[3] for k in wise}) == ["wise_shots-shots1", "wise_shots-shots4"]
    e = wise["shapes/clip_t/clip/wise_shots-shots4/none/none/seed0"]
    assert e.source == "shapes/clip_t/clip/ft_shots-shots4/none/none/seed0"
    assert e.recipe["knobs"] == {"alpha": 0.5, "shots": 4}
    ft = plan.entries["shapes/clip_t/clip/ft_shots-shots1/none/none/seed0"]
    assert ft.recipe["params"]["shots"] == 1 and ft.source.split("/")[3] == "zeroshot"
    for bad, match in (({"shots": 0}, r"adapt\.variants\.ft_shots\.shots: shots .* integer >= 1, got 0"),
                       ({"sweep": {"shots": [2, 1.5]}}, r"ft_shots\.sweep\.shots: .* got 1\.5"),
                       ({"fraction": 0.5}, r"adapt\.variants\.ft_shots: a variant trains on a fraction .* not both")):
        c = clip_config(repo_root)
        c["adapt"]["variants"]["ft_shots"] = {"kind": "finetune", "of": "zeroshot", "pretrain": ["clip"],
                                              "train": {"epochs": 1}, "sweep": {"shots": [1]}, **bad}
        with pytest.raises(ConfigError, match=match):
            check(c)


def test_clip_config_checks(repo_root):
    cfg = clip_config(repo_root)
    check(cfg)
    bad = clip_config(repo_root)
    bad["adapt"]["variants"]["zeroshot"] = {}
    with pytest.raises(ConfigError, match=r"adapt\.variants\.zeroshot \(kind zeroshot\) needs an open_clip backbone"):
        check(bad)
    bad = clip_config(repo_root)
    bad["pretrain"]["runs"][-1]["backbone"] = next(iter(cfg["backbones"]))
    with pytest.raises(ConfigError, match="needs an open_clip backbone"):
        check(bad)
    bad = clip_config(repo_root)
    variants = bad["pretrain"].get("variants") or {}
    bad["pretrain"]["variants"] = {**variants, "clip": {"params": {"caption_split": "wbe"}}}
    with pytest.raises(ConfigError, match=r"pretrain\.variants\.clip\.params\.caption_split: dataset 'shapes' has "
                                          r"no split 'wbe'"):
        check(bad)
