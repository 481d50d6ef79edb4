"""CountWorld: the synthetic counting world that every offline run uses.

A scene is a plain background (one of several colours and textures) holding 1..10 non-overlapping
objects of one shape class and colour, optionally with distractor objects of another shape. Scenes are
drawn from a seeded generator, so the same seed gives the same world on every machine. Each scene
comes with exact boxes (for training a detector) and captions from varied templates, with or without
a spelled count.

The world is deliberately diverse (shapes x colours x sizes x backgrounds x textures x templates gives
tens of thousands of caption contents): in a fine-tuning batch, two captions that differ only in the
number word are then rare, as in LAION, so a model can only learn to count from a loss that asks it to.
Files for the data pipeline (a LAION-style parquet source with realistic noise, a CountBench-format
benchmark, and the zero-shot tasks in CLIP_benchmark's webdataset layout) are written by
``countclip.world.files``; training and zero-shot sets come from
``countclip.world.sets``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from countclip.numbers import WORD_FOR_COUNT

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "heart")
PLURALS: dict[str, str] = {shape: shape + "s" for shape in SHAPES} | {"cross": "crosses"}
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (245, 225, 40),
    "orange": (250, 140, 20),
    "purple": (160, 60, 210),
    "white": (250, 250, 250),
    "pink": (250, 130, 200),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "grey": (110, 110, 110),
    "black": (15, 15, 20),
    "brown": (100, 65, 35),
    "navy": (20, 30, 90),
    "olive": (90, 100, 30),
    "teal": (20, 100, 100),
    "maroon": (100, 20, 35),
    "beige": (200, 185, 150),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checked")
# Radius as a share of the image side. Objects are as large as ten of them can be placed at random
# without overlap (above ~0.11 the rejection sampler stalls): at 64 px an object is 9-13 px across, so
# a patch-8 ViT sees its outline over 2-4 patches and can tell a circle from a hexagon (with radii
# 0.055-0.095 a supervised shape probe on the tiny image tower reached 74 % against 84 % here, and the
# pretrained stand-in stayed at chance on shapes: docs/experiment.md).
SIZES: dict[str, tuple[float, float]] = {"small": (0.07, 0.085), "large": (0.09, 0.105)}  # radius / side
MAX_FULL_SIZE = 10  # scenes of more objects (counted + distractors) scale every radius by sqrt(10 / n)
GRID_SIZES: dict[str, tuple[float, float]] = {"small": (0.6, 0.7), "large": (0.8, 0.9)}  # radius / half cell

PREFIXES: tuple[str, ...] = ("", "a photo of", "a picture of", "an image with", "there are", "close-up of")
BACKDROPS: tuple[str, ...] = (
    "on a {texture} {bg} background",
    "on {texture} {bg}",
    "over a {bg} backdrop",
    "on the {bg} {texture} background",
    "against {texture} {bg}",
)
# Count-free captions still speak of numerosity the way web captions do ("a few", "many"): a CLIP
# pretrained on them has coarse numerosity features but has never tied a number word to a count.
VAGUE_BY_NUMEROSITY: tuple[tuple[range, tuple[str, ...]], ...] = (
    (range(1, 2), ("a single", "one", "a lone")),
    (range(2, 4), ("a couple of", "a few", "a pair of")),
    (range(4, 7), ("some", "several", "a group of")),
    (range(7, 11), ("many", "lots of", "a crowd of")),
)
VAGUE_QUANTITIES: tuple[str, ...] = ("some", "several", "a few", "a group of", "many", "")


@dataclass(frozen=True)
class Scene:
    """One CountWorld image: what is drawn and where."""

    shape: str
    colour: str
    size: str
    background: str
    texture: str
    boxes: tuple[tuple[float, float, float, float], ...]  # counted objects, (x0, y0, x1, y1) in [0, 1]
    distractor_shape: str | None = None
    distractor_boxes: tuple[tuple[float, float, float, float], ...] = field(default=())

    @property
    def count(self) -> int:
        return len(self.boxes)


def sample_scene(
    rng: np.random.Generator,
    count: int,
    *,
    distractors: int = 0,
    shape: str | None = None,
    same_size: bool = False,
    grid: int | None = None,
) -> Scene:
    """Draw a scene with ``count`` objects of one class (and optional distractors of another).

    same_size: one radius for all objects of the scene (with 3 % jitter). grid: place each object in
    its own cell of a grid x grid lattice (jittered inside the cell), e.g. the ViT's patch grid, so an
    object covers one patch rather than straddling up to four.
    """
    if not 1 <= count <= 10:
        raise ValueError(f"CountWorld scenes hold 1..10 counted objects, got {count}")
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = list(OBJECT_COLOURS)[rng.integers(len(OBJECT_COLOURS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    background = list(BACKGROUND_COLOURS)[rng.integers(len(BACKGROUND_COLOURS))]
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    other = [s for s in SHAPES if s != shape][rng.integers(len(SHAPES) - 1)] if distractors else None
    n = count + distractors
    if grid:
        if n > grid * grid:
            raise ValueError(f"{n} objects do not fit a {grid}x{grid} grid")
        half = 0.5 / grid
        low, high = GRID_SIZES[size]
        radii = (rng.uniform(low, high) * np.ones(n) if same_size else rng.uniform(low, high, size=n)) * half
        cells = rng.choice(grid * grid, size=n, replace=False)
        slack = half - radii  # how far a centre may move and stay inside its cell
        centres = np.stack([(cells % grid) * 2 * half + half, (cells // grid) * 2 * half + half], axis=1)
        centres += rng.uniform(-0.6, 0.6, size=(n, 2)) * slack[:, None]
    else:
        if same_size:  # one radius for the whole scene, with a little jitter
            radii = rng.uniform(*SIZES[size]) * rng.uniform(0.97, 1.03, size=n)
        else:
            radii = rng.uniform(*SIZES[size], size=n)
        if n > MAX_FULL_SIZE:  # counted objects plus distractors: shrink all alike so that they fit
            radii *= math.sqrt(MAX_FULL_SIZE / n)
        centres = _place(rng, radii)
    boxes = tuple(_box(c, r) for c, r in zip(centres, radii))
    return Scene(shape, colour, size, background, texture, boxes[:count], other, boxes[count:])


def _place(rng: np.random.Generator, radii: np.ndarray, gap: float = 0.02) -> np.ndarray:
    """Non-overlapping centres in [0, 1]^2 by rejection; restarts if the layout gets stuck."""
    for _ in range(100):
        centres: list[np.ndarray] = []
        for r in radii:
            for _ in range(200):
                c = rng.uniform(r + 0.01, 1 - r - 0.01, size=2)
                if all(np.hypot(*(c - o)) > r + ro + gap for o, ro in zip(centres, radii)):
                    centres.append(c)
                    break
            else:
                break
        if len(centres) == len(radii):
            return np.array(centres)
    raise RuntimeError("could not place CountWorld objects without overlap")


def _box(centre: np.ndarray, radius: float) -> tuple[float, float, float, float]:
    x, y = float(centre[0]), float(centre[1])
    return (x - radius, y - radius, x + radius, y + radius)


def render(scene: Scene, image_size: int) -> np.ndarray:
    """Draw the scene as an (H, W, 3) uint8 array."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND_COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    _draw_texture(draw, scene.texture, BACKGROUND_COLOURS[scene.background], image_size)
    colour = OBJECT_COLOURS[scene.colour]
    for box in scene.boxes:
        _draw_shape(draw, scene.shape, box, colour, image_size)
    if scene.distractor_shape:
        for box in scene.distractor_boxes:
            _draw_shape(draw, scene.distractor_shape, box, colour, image_size)
    return np.asarray(image)


def _draw_texture(draw: ImageDraw.ImageDraw, texture: str, rgb: tuple[int, int, int], size: int) -> None:
    # A lighter shade of the background, so textures never look like objects.
    shade = tuple(min(255, int(c * 1.35) + 18) for c in rgb)
    step = max(4, size // 8)
    if texture == "striped":
        for x in range(0, size, step):
            draw.rectangle([x, 0, x + step // 3, size], fill=shade)
    elif texture == "dotted":
        for x in range(step // 2, size, step):
            for y in range(step // 2, size, step):
                draw.point([(x, y)], fill=shade)
    elif texture == "checked":
        for x in range(0, size, step):
            for y in range(0, size, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=shade)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, rgb, size: int) -> None:
    x0, y0, x1, y1 = (v * size for v in box)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=rgb)
    elif shape == "square":
        inset = r * 0.15
        draw.rectangle([x0 + inset, y0 + inset, x1 - inset, y1 - inset], fill=rgb)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=rgb)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=rgb)
    elif shape == "heart":
        h = r * 0.5
        draw.ellipse([cx - r, cy - r * 0.8, cx, cy + r * 0.2], fill=rgb)
        draw.ellipse([cx, cy - r * 0.8, cx + r, cy + r * 0.2], fill=rgb)
        draw.polygon([(cx - r, cy - h * 0.2), (cx + r, cy - h * 0.2), (cx, cy + r)], fill=rgb)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=rgb)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        angles, radii = [90, 210, 330], [r] * 3
    elif shape == "diamond":
        angles, radii = [90, 180, 270, 0], [r, r * 0.7, r, r * 0.7]
    elif shape == "hexagon":
        angles, radii = list(range(0, 360, 60)), [r] * 6
    elif shape == "star":
        angles, radii = list(range(90, 450, 36)), [r if i % 2 == 0 else r * 0.45 for i in range(10)]
    else:
        raise ValueError(f"unknown CountWorld shape {shape!r}")
    return [
        (cx + rad * math.cos(math.radians(a)), cy - rad * math.sin(math.radians(a)))
        for a, rad in zip(angles, radii)
    ]


@dataclass(frozen=True)
class CaptionStyle:
    """How CountWorld captions speak. Counting captions always name colour and backdrop, so that
    two of them rarely differ only in the number word; count-free captions drop attributes at the
    rates below, as web captions vary in detail, so that the shape word alone must often identify
    an image (a pretrained model then knows shapes, not only colours)."""

    numerosity: bool = False  # count-free captions use vague words matching the scene ("a few", "many")
    keep_colour: float = 0.6
    keep_backdrop: float = 0.5
    keep_size: float = 0.3


def caption(scene: Scene, rng: np.random.Generator, *, with_count: bool, style: CaptionStyle = CaptionStyle()) -> str:
    """A caption for the scene; with_count spells the count (which must be 2..10)."""
    if with_count:
        if scene.count not in WORD_FOR_COUNT:
            raise ValueError(f"a counting caption needs 2..10 objects, the scene has {scene.count}")
        quantity = WORD_FOR_COUNT[scene.count]
        keep_colour, keep_backdrop, keep_size = 1.0, 1.0, 0.5
    else:
        if style.numerosity and rng.random() < 0.8:
            words = next(words for counts, words in VAGUE_BY_NUMEROSITY if scene.count in counts)
        else:
            words = VAGUE_QUANTITIES
        quantity = words[rng.integers(len(words))]
        keep_colour, keep_backdrop, keep_size = style.keep_colour, style.keep_backdrop, style.keep_size
    backdrop = BACKDROPS[rng.integers(len(BACKDROPS))].format(texture=scene.texture, bg=scene.background)
    parts = [
        PREFIXES[rng.integers(len(PREFIXES))],
        quantity,
        scene.size if rng.random() < keep_size else "",
        scene.colour if rng.random() < keep_colour else "",
        PLURALS[scene.shape],
        backdrop if rng.random() < keep_backdrop else "",
    ]
    return " ".join(" ".join(parts).split())


ZEROSHOT_TASKS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(OBJECT_COLOURS),
    "background": tuple(BACKGROUND_COLOURS),
}


def zeroshot_prompts(task: str, value: str, n: int = 32, seed: int = 0) -> list[str]:
    """Count-free prompts of the kind CountWorld captions use that name ``value`` of ``task`` (a
    shape, an object colour or a background) amid varied other attributes: their mean embedding is
    the class's zero-shot classifier (CLIP's prompt ensembling, with the world's own phrasing)."""
    if task not in ZEROSHOT_TASKS or value not in ZEROSHOT_TASKS[task]:
        raise ValueError(f"unknown zero-shot class {task}={value!r}")
    rng = np.random.default_rng((seed, list(ZEROSHOT_TASKS).index(task), ZEROSHOT_TASKS[task].index(value)))
    style = CaptionStyle(numerosity=False, keep_colour=1.0 if task == "colour" else 0.5,
                         keep_backdrop=1.0 if task == "background" else 0.5)
    prompts = []
    for _ in range(n):
        scene = sample_scene(rng, 3, shape=value if task == "shape" else None)
        if task != "shape":
            scene = dataclasses.replace(scene, **{task: value})
        prompts.append(caption(scene, rng, with_count=False, style=style))
    return prompts


def zeroshot_class_word(task: str, value: str) -> str:
    """How captions name a zero-shot class: a shape by its plural ("circles"), a colour by its name."""
    return PLURALS[value] if task == "shape" else value


def zeroshot_templates(task: str, n: int = 32, seed: int = 0) -> list[str]:
    """CLIP-style templates for ``task``: count-free captions of the kind ``zeroshot_prompts`` draws,
    with ``{c}`` where the class word goes. Every class shares them (CLIP_benchmark's convention), so
    the prompts of two classes differ only in the class word."""
    if task not in ZEROSHOT_TASKS:
        raise ValueError(f"unknown zero-shot task {task!r}; tasks are {list(ZEROSHOT_TASKS)}")
    rng = np.random.default_rng((seed, 1 + len(ZEROSHOT_TASKS), list(ZEROSHOT_TASKS).index(task)))
    style = CaptionStyle(numerosity=False, keep_colour=1.0 if task == "colour" else 0.5,
                         keep_backdrop=1.0 if task == "background" else 0.5)
    value = ZEROSHOT_TASKS[task][0]  # drawn with the first class, whose word then becomes the slot
    templates: list[str] = []
    for _ in range(50 * n):
        if len(templates) == n:
            break
        scene = sample_scene(rng, 3, shape=value if task == "shape" else None)
        if task != "shape":
            scene = dataclasses.replace(scene, **{task: value})
        words = caption(scene, rng, with_count=False, style=style).split()
        template = " ".join("{c}" if word == zeroshot_class_word(task, value) else word for word in words)
        if template.count("{c}") == 1 and template not in templates:
            templates.append(template)
    return templates
