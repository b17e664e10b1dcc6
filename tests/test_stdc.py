"""STDC-Seg (core/models/stdc.py), its detail loss and its official checkpoint format (CPU)."""
import math

import pytest
import torch
from conftest import tiny_args

import train_source
from core import losses
from core.checkpoint import load_checkpoint
from core.losses import cross_entropy, detail_loss, detail_target, seg_loss_sum
from core.models import PretrainedWeightsError, build_model, param_groups, upsample
from core.models.stdc import TrainOutputs

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


def test_param_groups_put_ffm_and_heads_at_10x(stdc1):
    slow, fast = param_groups(stdc1, lr=0.01, weight_decay=5e-4)
    assert (slow["lr"], fast["lr"]) == (0.01, pytest.approx(0.1))
    ids = [id(p) for g in (slow, fast) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in stdc1.parameters()) and len(set(ids)) == len(ids)
    heads = [stdc1.ffm, stdc1.classifier, stdc1.aux8, stdc1.aux16, stdc1.detail]
    assert {id(p) for p in fast["params"]} == {id(p) for m in heads for p in m.parameters()}


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
    checkpoints = tmp_path / "hub" / "checkpoints"
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("stdc", 19, "stdc2", pretrained="imagenet")
    assert "STDCNet1446_76.47.tar" in str(err.value) and str(checkpoints) in str(err.value)
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
    slow, fast = a["optimizer"]["param_groups"]
    assert fast["lr"] == pytest.approx(10 * slow["lr"])
