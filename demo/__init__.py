"""Synthetic demo domain pair: procedural street scenes in a GTA5-like and a Cityscapes-like style.

    python -m demo                          # make data/demo (once) and print what it holds
    python -m demo --root /tmp/demo --seed 3 --force

Why it exists: a new user should see the whole story of the project in minutes on a CPU: a
network trained on the source loses on the target, and the adaptation methods win some of it
back. So the gap is of the kind those methods act on (docs: shared reference `demo.md`):

- ONE scene distribution (layout, object shapes, per-class base colours) for both domains;
  the domains differ in their global appearance (`render_style`: colour cast, saturation,
  contrast and gamma, an illumination gradient and vignette, blur, sensor noise, texture
  grain). A per-class colour permutation would be a gap no global method could close, so
  there is none.
- A moderate label-distribution shift (`SOURCE_PRIOR` / `TARGET_PRIOR`: more parked cars and
  fewer people in the target), which is what output-space alignment reacts to.
- The real folder layouts, so the real loaders read it: GTA5 `images/00001.png` with palette
  labels whose index is the Cityscapes label id, and Cityscapes `leftImg8bit` / `gtFine`
  `_labelIds.png` files.

Geometry, in one paragraph: a pinhole camera at height 1 (one unit is about 1.5 m) looks
along a straight street. A ground point at depth z projects to row `y_h + f / z` and a lateral
offset X to column `x_v + X * f / z`, so at depth z one world unit is `q = f / z` pixels.
Every drawing function works from (X, z, size in units) and that single scale `q`; facades
and the ground are drawn per pixel from the inverse mapping, objects as small sprites painted
far to near. Label ids and base colours are always painted with the same mask, so the label
is exact by construction.

Each frame's RNG is `np.random.default_rng([seed, stream, index])` with stream 0 = source,
1 = target train, 2 = target val: a frame does not depend on the counts or generation order.

Modules: `palette` (label ids, base colours), `scene` (priors, layout sampling), `canvas`
(canvas, shape primitives, noise), `draw` (background and bonnet) and `things` (objects),
`style` (the two domain styles), `write` (frames, the tree on disk, inspection), `cli`
(`python -m demo`).
"""
from demo.canvas import Canvas, value_noise
from demo.cli import main
from demo.draw import draw_scene
from demo.scene import (
    SOURCE_PRIOR,
    TARGET_PRIOR,
    Scene,
    ScenePrior,
    Side,
    Thing,
    sample_scene,
    sample_side,
    sample_things,
)
from demo.style import SOURCE_STYLE, TARGET_STYLE, Style, render_style, soft_focus
from demo.things import DRAWERS
from demo.write import (
    DEMO_ROOT,
    FORMAT_VERSION,
    SOURCE_SIZE,
    STREAM_SOURCE,
    STREAM_TARGET_TRAIN,
    STREAM_TARGET_VAL,
    TARGET_SIZE,
    DemoPaths,
    DemoRootError,
    class_frequencies,
    ensure_demo,
    frequency_table,
    generate_demo,
    render_frame,
    write_frame,
)

__all__ = [
    "DEMO_ROOT", "DRAWERS", "FORMAT_VERSION", "SOURCE_PRIOR", "SOURCE_SIZE", "SOURCE_STYLE",
    "STREAM_SOURCE", "STREAM_TARGET_TRAIN", "STREAM_TARGET_VAL", "TARGET_PRIOR", "TARGET_SIZE",
    "TARGET_STYLE", "Canvas", "DemoPaths", "DemoRootError", "Scene", "ScenePrior", "Side",
    "Style", "Thing", "class_frequencies", "draw_scene", "ensure_demo", "frequency_table",
    "generate_demo", "main", "render_frame", "render_style", "sample_scene", "sample_side",
    "sample_things", "soft_focus", "value_noise", "write_frame",
]
