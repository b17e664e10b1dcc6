"""STDC-Seg (core/models/stdc.py), its detail loss and its official checkpoint format (CPU)."""
import math

import pytest
import torch
from conftest import tiny_args
from torch import nn

import train_source
from core import losses
from core.checkpoint import load_checkpoint
from core.losses import cross_entropy, detail_loss, detail_target, seg_loss_sum
from core.models import PretrainedWeightsError, build_model, model_options, param_groups, upsample
from core.models.stdc import STAGE_DEPTHS, TrainOutputs

# The authors' network (models/model_stages.py): backbone, context path, FFM, main head.
INFERENCE_PARAMS = {"stdc1": 8_275_104, "stdc2": 12_305_568}
TRAINING_HEADS = 2 * 75_072 + 147_648   # aux8, aux16 (3x3 conv-BN-ReLU(64) + 1x1), detail


@pytest.fixture(scope="module")
def stdc1():
    torch.manual_seed(0)
    return build_model("stdc", backbone="stdc1")


# ---- shapes and the train/eval contract ----

@pytest.mark.parametrize("backbone", ["stdc1", "stdc2"])
@torch.no_grad()
def test_shapes_in_train_and_eval_mode(backbone):
    model = build_model("stdc", 19, backbone)
    x = torch.randn(2, 3, 70, 90)           # odd size: 1/8 is 9x12, 1/16 is 5x6
    outputs = model.train()(x)
    assert isinstance(outputs, TrainOutputs) and len(outputs) == 3   # main, aux8, aux16
    assert all(o.shape == (2, 19, 70, 90) for o in outputs)
    assert outputs.detail.shape == (2, 1, 9, 12)
    raw = model(x, upsample=False)          # the heads' own scales
    assert [tuple(o.shape[-2:]) for o in raw] == [(9, 12), (9, 12), (5, 6)]
    resized = upsample(raw, (70, 90))       # keeps the detail logits for the detail loss
    assert resized.detail is raw.detail and all(o.shape == (2, 19, 70, 90) for o in resized)
    out = model.eval()(x[:1])
    assert torch.is_tensor(out) and out.shape == (1, 19, 70, 90)
    assert model(x[:1], upsample=False).shape == (1, 19, 9, 12)


@pytest.mark.parametrize("backbone", ["stdc1", "stdc2"])
def test_inference_parameter_counts(backbone):
    """Only the modules an eval-mode forward calls: found with forward hooks (an independent
    route to the list the model gives), each module counting the parameters it owns itself."""
    expected = INFERENCE_PARAMS[backbone]
    model = build_model("stdc", 19, backbone).eval()
    called = set()
    for m in model.modules():
        m.register_forward_hook(lambda module, inputs, output: called.add(module))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert sum(p.numel() for m in called for p in m.parameters(recurse=False)) == expected
    assert sum(p.numel() for m in model.inference_modules() for p in m.parameters()) == expected
    assert sum(p.numel() for p in model.parameters()) == expected + TRAINING_HEADS
    assert not {model.aux8, model.aux16, model.detail} & called


def authors_get_params(model):
    """The authors' optimiser groups, transcribed onto our module names: MichaelFan01/STDC-Seg
    models/model_stages.py (BiSeNet.get_params over its children, each child's get_params)
    and optimizer_loss.py (the param_list). Returns [(params, lr multiplier, decays?)].

    Their children -> ours: cp (ContextPath: the STDC backbone, arm16, arm32, conv_avg,
    conv_head32, conv_head16) -> backbone, arm16, arm32, global_context, head32, head16;
    ffm -> ffm; conv_out, conv_out16, conv_out32, conv_out_sp8 (BiSeNetOutput) -> classifier,
    aux8, aux16, detail. A child's get_params: every nn.Linear / nn.Conv2d weight with decay
    (a bias without), every BatchNorm2d of model_stages.py (InPlaceABNSync) without decay;
    the backbone's BatchNorm (plain nn.BatchNorm2d of nets/stdcnet.py) is not InPlaceABNSync
    and lands nowhere. FeatureFusionModule and BiSeNetOutput children go to the lr_mul
    groups (10x)."""
    children = {"cp": [model.backbone, model.arm16, model.arm32, model.global_context,
                       model.head32, model.head16],
                "ffm": [model.ffm], "conv_out": [model.classifier], "conv_out16": [model.aux8],
                "conv_out32": [model.aux16], "conv_out_sp8": [model.detail]}
    plain_bn = {id(m) for m in model.backbone.modules()}      # nets/stdcnet.py's layers

    def child_get_params(modules):
        wd, nowd = [], []
        for module in modules:
            for _, m in module.named_modules():
                if isinstance(m, nn.Linear | nn.Conv2d):
                    wd.append(m.weight)
                    if m.bias is not None:
                        nowd.append(m.bias)
                elif isinstance(m, nn.BatchNorm2d) and id(m) not in plain_bn:
                    nowd += list(m.parameters())
        return wd, nowd

    wd, nowd, lr_mul_wd, lr_mul_nowd = [], [], [], []
    for name, modules in children.items():
        child_wd, child_nowd = child_get_params(modules)
        if name == "cp":
            wd, nowd = wd + child_wd, nowd + child_nowd
        else:
            lr_mul_wd, lr_mul_nowd = lr_mul_wd + child_wd, lr_mul_nowd + child_nowd
    return [(wd, 1, True), (nowd, 1, False), (lr_mul_wd, 10, True), (lr_mul_nowd, 10, False)]


def backbone_bn_tensors(depths):
    """BatchNorm weight + bias of the backbone, by hand: the two stem ConvX, 4 ConvX per STDC
    module, and the avd_layer of the first (stride-2) module of each of the 3 stages."""
    return 2 * (2 + 4 * sum(depths) + 3)


@pytest.mark.parametrize("backbone", ["stdc1", "stdc2"])
def test_param_groups_are_the_authors_get_params(backbone):
    model = build_model("stdc", 19, backbone)
    groups = param_groups(model, lr=0.01, weight_decay=5e-4)
    theirs = authors_get_params(model)
    assert len(groups) == len(theirs) == 4
    for group, (params, lr_mul, decays) in zip(groups, theirs, strict=True):
        ids = [id(p) for p in group["params"]]
        assert len(set(ids)) == len(ids) and set(ids) == {id(p) for p in params}
        assert group["lr"] == pytest.approx(0.01 * lr_mul)
        assert group["weight_decay"] == (5e-4 if decays else 0.0)
    # left out: exactly the backbone's BatchNorm affine tensors, which never get a gradient.
    # The authors' STDCNet813 leaves out 62: these 58, and 4 of the ImageNet tail
    # (conv_last.bn, bn) that their class builds and STDC-Seg never runs (not built here).
    grouped = {id(p) for g in groups for p in g["params"]}
    left = [n for n, p in model.named_parameters() if id(p) not in grouped]
    assert len(left) == backbone_bn_tensors(STAGE_DEPTHS[backbone]) == \
        {"stdc1": 58, "stdc2": 106}[backbone]
    assert all(n.startswith("backbone.features.") and n.endswith((".weight", ".bias"))
               and isinstance(model.get_submodule(n.rsplit(".", 1)[0]), nn.BatchNorm2d)
               for n in left)
    assert sorted(n for n, p in model.named_parameters() if not p.requires_grad) == sorted(left)
    if backbone == "stdc1":     # by hand: backbone 2 + 4 x 6 + 3 convs, context path 7 convs
        assert [len(g["params"]) for g in groups] == [29 + 7, 2 * 7, 11, 2 * 5]


def test_an_authors_step_decays_conv_weights_only():
    """One SGD step with zero gradients: conv weights shrink by lr x weight decay (x 10 lr in
    the FFM and heads), BatchNorm parameters stay, the backbone's BN is not touched."""
    model = build_model("stdc", 19, "stdc1")
    groups = param_groups(model, lr=0.01, weight_decay=5e-4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-4).step()
    for name, p in model.named_parameters():
        fast = name.split(".")[0] in ("ffm", "classifier", "aux8", "aux16", "detail")
        if p.ndim == 4:   # conv weights (no conv has a bias)
            factor = 1 - (0.1 if fast else 0.01) * 5e-4
            torch.testing.assert_close(p.detach(), before[name] * factor)
        else:
            assert torch.equal(p.detach(), before[name]), name


def test_all_groups_option_trains_every_parameter_with_decay():
    """stdc_groups="all" (the grouping of runs older than the option): every parameter, all
    with weight decay; FFM and heads at 10x."""
    model = build_model("stdc", 19, "stdc1", stdc_groups="all")
    slow, fast = param_groups(model, lr=0.01, weight_decay=5e-4)
    assert (slow["lr"], fast["lr"]) == (0.01, pytest.approx(0.1))
    assert slow["weight_decay"] == fast["weight_decay"] == 5e-4
    ids = [id(p) for g in (slow, fast) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    assert all(p.requires_grad for p in model.parameters())
    heads = [model.ffm, model.classifier, model.aux8, model.aux16, model.detail]
    assert {id(p) for p in fast["params"]} == {id(p) for m in heads for p in m.parameters()}
    assert model_options({"model": "stdc"}) == {"stdc_groups": "all"}    # older checkpoints
    assert model_options({"model": "stdc", "stdc_groups": "authors"}) == {
        "stdc_groups": "authors"}
    with pytest.raises(ValueError, match="'mine'"):
        build_model("stdc", 19, "stdc1", stdc_groups="mine")
    with pytest.raises(ValueError, match="stdc_groups is an option of --model stdc"):
        build_model("bisenet", stdc_groups="all")


# ---- detail ground truth and loss ----

def vertical_edge_label():
    """8 x 16 train ids: road (0) in columns 0-7, car (13) in columns 8-15."""
    label = torch.zeros(1, 8, 16, dtype=torch.long)
    label[:, :, 8:] = 13
    return label


def test_detail_target_of_a_vertical_edge():
    # By hand. Laplacian 8v - sum(neighbours), zero padding: > 0 on the car side of the edge
    # (column 8) and on the car half's image borders (rows 0 and 7, column 15); <= 0 on the
    # road side. Stride 2 samples rows/columns 0, 2, 4, 6 (edge at column 8, border at row 0)
    # and nearest upsampling doubles them: columns 8-9, rows 0-1. Stride 4 alone weighs 0.1,
    # not above the threshold, so it adds nothing (e.g. rows 2-3, columns 10-11 stay 0).
    expected = torch.zeros(8, 16)
    expected[:, 8] = expected[:, 9] = expected[:, 15] = 1      # edge, its stride-2 copy, border
    expected[0:2, 8:] = 1                                         # top border, and stride 2
    expected[7, 8:] = 1                                           # bottom border
    target = detail_target(vertical_edge_label())
    assert target.shape == (1, 1, 8, 16)
    assert torch.equal(target[0, 0], expected)
    # the edge's place follows the larger id: swap the classes and it moves to column 7
    swapped = detail_target(13 - vertical_edge_label())[0, 0]
    assert swapped[2:6, 7].eq(1).all() and swapped[2:6, 8].eq(0).all()
    assert torch.equal(detail_target(torch.zeros(1, 8, 16, dtype=torch.long)),
                       torch.zeros(1, 1, 8, 16))


def test_detail_loss_by_hand():
    """Zero logits: p = 1/2 everywhere, BCE = ln 2, dice = 1 - (2 k/2 + 1) / (n/2 + k + 1)
    for k target pixels of n, averaged over the two images."""
    labels = torch.cat([vertical_edge_label(), torch.zeros(1, 8, 16, dtype=torch.long)])
    k, n = 8 * 3 + 2 * 5 + 5, 128       # columns 8, 9, 15; rows 0, 1, 7 add 5 each (cols 10-14)
    assert detail_target(labels)[0].sum() == k
    dice = ((1 - (k + 1) / (n / 2 + k + 1)) + (1 - 1 / (n / 2 + 1))) / 2
    loss = detail_loss(torch.zeros(2, 1, 1, 2), labels)
    assert loss.item() == pytest.approx(math.log(2) + dice, rel=1e-6)


def test_seg_loss_sum_adds_the_detail_loss():
    torch.manual_seed(0)
    labels = torch.randint(0, 19, (2, 16, 16))
    main, aux = torch.randn(2, 19, 16, 16), torch.randn(2, 19, 16, 16)
    detail = torch.randn(2, 1, 2, 2)
    plain = cross_entropy(main, labels) + cross_entropy(aux, labels)
    assert seg_loss_sum(cross_entropy, (main, aux), labels) == pytest.approx(plain.item())
    with_detail = seg_loss_sum(cross_entropy, TrainOutputs((main, aux), detail), labels)
    assert with_detail.item() == pytest.approx((plain + detail_loss(detail, labels)).item())


def test_training_lowers_the_detail_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[0, 16:48, 20:40] = 13                 # a car on the road
    labels[1, :, 32:] = 2                        # a wall
    model = build_model("stdc", 19, "stdc1").train()
    optimizer = torch.optim.SGD(param_groups(model, 0.01, 0.0), momentum=0.9)
    history = []
    for _ in range(8):
        loss = detail_loss(model(x).detail, labels)
        loss.backward()
        if not history:   # the detail head trains the backbone's 1/8 features (and below)
            assert model.backbone.features[0].conv.weight.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
        history.append(loss.item())
    assert history[-1] < 0.8 * history[0]


# ---- the official ImageNet checkpoint format ----

OFFICIAL_KEYS = ("features.0.conv.weight", "features.0.bn.running_var",
                 "features.2.conv_list.0.conv.weight", "features.2.avd_layer.0.weight",
                 "features.2.avd_layer.1.running_mean", "features.7.conv_list.3.bn.weight")
STAGE_ALIASES = {"x2": [0], "x4": [1], "x8": [2, 3], "x16": [4, 5], "x32": [6, 7]}  # STDC1


def official_state_dict(seed=1):
    """An STDCNet813 state dict as the authors' class writes it: features.* (random values),
    the same tensors again under the x2 .. x32 stage aliases, and the ImageNet tail."""
    torch.manual_seed(seed)
    features = {k: torch.randn_like(v.float()) if v.is_floating_point() else v
                for k, v in build_model("stdc", 19, "stdc1").backbone.state_dict().items()}
    state = dict(features)
    for alias, indices in STAGE_ALIASES.items():
        for j, i in enumerate(indices):
            for key, value in features.items():
                if key.startswith(f"features.{i}."):
                    state[f"{alias}.{j}." + key.split(".", 2)[2]] = value
    state.update({"conv_last.conv.weight": torch.randn(1024, 1024, 1, 1),
                  "conv_last.bn.weight": torch.ones(1024), "fc.weight": torch.randn(1024, 1024),
                  "bn.weight": torch.ones(1024), "bn.running_mean": torch.zeros(1024),
                  "linear.weight": torch.randn(1000, 1024)})
    return features, state


def test_official_checkpoint_loads_into_the_backbone(tmp_path):
    features, state = official_state_dict()
    assert set(OFFICIAL_KEYS) <= set(features)   # our module uses the official key names
    path = tmp_path / "STDCNet813M_73.91.tar"
    torch.save({"epoch": 250, "best_prec1": 73.91, "state_dict": state}, path)
    model = build_model("stdc", 19, "stdc1", pretrained=str(path))
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(features)
    for key, value in loaded.items():
        assert torch.equal(value, features[key]), key


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    _, state = official_state_dict()
    del state["features.5.conv_list.2.bn.bias"]
    state["features.9.conv.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "odd.tar")
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("stdc", 19, "stdc1", pretrained=str(tmp_path / "odd.tar"))
    for part in ("odd.tar", "stdc1", "1 missing keys", "features.5.conv_list.2.bn.bias",
                 "1 unexpected keys", "features.9.conv.weight"):
        assert part in str(err.value)
    with pytest.raises(PretrainedWeightsError, match="missing keys.*features.8"):  # STDC2 wants
        build_model("stdc", 19, "stdc2", pretrained=str(tmp_path / "odd.tar"))    # 12 modules


def test_imagenet_reads_the_official_file_from_the_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    checkpoints = tmp_path / "hub" / "checkpoints"
    with pytest.raises(PretrainedWeightsError) as err:   # Google Drive / Baidu: by hand only
        build_model("stdc", 19, "stdc2", pretrained="imagenet")
    message = str(err.value)
    assert "STDCNet1446_76.47.tar" in message and str(checkpoints) in message
    for part in ("cannot be downloaded", "Google Drive", "github.com/MichaelFan01/STDC-Seg"):
        assert part in message
    features, state = official_state_dict()
    checkpoints.mkdir(parents=True)
    torch.save({"state_dict": state}, checkpoints / "STDCNet813M_73.91.tar")
    model = build_model("stdc", 19, "stdc1", pretrained="imagenet")
    assert torch.equal(model.backbone.features[3].conv_list[1].conv.weight,
                       features["features.3.conv_list.1.conv.weight"])


# ---- a training script end to end ----

def test_train_source_defaults_run_and_resume_exactly(tiny_demo, tmp_path, monkeypatch):
    args = train_source.parse_args(tiny_args(tiny_demo, tmp_path / "d", "--model", "stdc"))
    assert (args.backbone, args.lr, args.weight_decay) == ("stdc1", 0.01, 5e-4)
    extra = ("--model", "stdc", "--epochs", 2, "--aug", "flip,scale", "--aug-p", 0.7,
             "--source-size", 32, 64, "--val-size", 32, 64)     # small: a 1x2 map at 1/32
    straight, split = tmp_path / "straight", tmp_path / "split"
    calls = []   # the script's seg_loss_sum adds the detail loss at every iteration
    monkeypatch.setattr(losses, "detail_loss", lambda *a: calls.append(1) or detail_loss(*a))
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, straight, *extra)))
    monkeypatch.undo()
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, split, *extra,
                                                        "--stop-after", 1)))
    assert load_checkpoint(split / "last.pth")["epoch"] == 0
    train_source.main(train_source.parse_args(tiny_args(
        tiny_demo, split, *extra, "--resume", split / "last.pth")))
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(split / "last.pth")
    assert a["args"]["model"] == "stdc" and "detail.1.weight" in a["model"]
    assert len(calls) == a["iteration"] > 0
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"] and a["best_miou"] == b["best_miou"]
    # 2 or 4 groups (stdc_groups 'all' / 'authors'), at the base LR or 10x (the scheduler
    # keeps each group's starting LR as initial_lr; at the end of the run every lr is 0)
    lrs = sorted({g["initial_lr"] for g in a["optimizer"]["param_groups"]})
    assert lrs == [0.01, pytest.approx(0.1)]
