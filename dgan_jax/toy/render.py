"""A procedural renderer of side-view cars with exact part masks: the toy domain.

Every image is drawn on a 4x supersampled canvas and reduced to `size` pixels: the
image by averaging each 4x4 block, the mask by the most frequent label in it (ties to
the smaller id). Image i of seed s is a function of (s, i) alone.

Parts are not separable by colour: body and background colours span the whole colour
space, the door has the body's paint, wheel wells, bumpers and shadows are as dark as
tyres, hubs may be painted like the body, windows are tinted like dark paint.
"""

import colorsys

import numpy as np
from tqdm import tqdm

CLASS_NAMES = ('background', 'body', 'door', 'window', 'tyre', 'hub', 'light')
BACKGROUND, BODY, DOOR, WINDOW, TYRE, HUB, LIGHT = range(len(CLASS_NAMES))
NUM_CLASSES = len(CLASS_NAMES)
# Colours for mask pictures: background white, then one distinct colour per part.
PALETTE = (255, 255, 255, 70, 110, 200, 240, 170, 40, 120, 220, 240,
           40, 40, 40, 200, 80, 200, 250, 240, 60)
SUPERSAMPLE = 4


def _hsv(h, s, v) -> np.ndarray:
  return np.asarray(colorsys.hsv_to_rgb(h % 1.0, np.clip(s, 0, 1), np.clip(v, 0, 1)))


def _inside_convex(x, y, vertices) -> np.ndarray:
  """Points inside the convex polygon `vertices` [(x, y), ...] in either winding."""
  signs = []
  for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
    signs.append((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0))
  signs = np.stack(signs)
  return np.all(signs >= 0, axis=0) | np.all(signs <= 0, axis=0)


def _inside_ellipse(x, y, cx, cy, rx, ry) -> np.ndarray:
  return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _smooth_noise(rng, n: int, cells: int) -> np.ndarray:
  """[n, n] noise in [-1, 1], bilinear interpolation of a random cells x cells grid."""
  coarse = rng.uniform(-1, 1, (cells + 1, cells + 1))
  t = np.linspace(0, cells, n, endpoint=False)
  i = t.astype(int)
  f = t - i
  rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
  return rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]


def _background(rng, n: int, x, y, size: float) -> np.ndarray:
  """[n, n, 3]: sky over ground, textured, with a few buildings or posts."""
  horizon = rng.uniform(0.35, 0.75) * size
  sky, ground = (_hsv(rng.uniform(), rng.uniform(0, 0.8), rng.uniform(0.1, 1.0))
                 for _ in range(2))
  ramp = np.clip((y - horizon) / (0.08 * size) + 0.5, 0, 1)[..., None]
  image = sky * (1 - ramp) + ground * ramp
  image = image * (1 + 0.25 * (y / size - 0.5))[..., None]
  for _ in range(rng.integers(0, 4)):
    left = rng.uniform(-0.1, 0.9) * size
    width = rng.uniform(0.05, 0.3) * size
    top = horizon - rng.uniform(0.05, 0.4) * size
    inside = (x >= left) & (x < left + width) & (y >= top) & (y < horizon)
    image[inside] = _hsv(rng.uniform(), rng.uniform(0, 0.7), rng.uniform(0.1, 1.0))
  texture = _smooth_noise(rng, n, int(rng.integers(2, 9))) * rng.uniform(0, 0.25)
  return image + texture[..., None]


def render_one(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
  """-> (image [size, size, 3] uint8, mask [size, size] uint8 class ids)."""
  n = size * SUPERSAMPLE
  coords = (np.arange(n) + 0.5) / SUPERSAMPLE
  y, x = np.meshgrid(coords, coords, indexing='ij')
  image = _background(rng, n, x, y, size)
  label = np.zeros((n, n), np.uint8)

  length = rng.uniform(0.62, 0.92) * size
  cx = size / 2 + rng.uniform(-0.08, 0.08) * size
  ground = rng.uniform(0.68, 0.86) * size
  # Pose: the car faces left or right and leans a few degrees; the part geometry
  # below is drawn in the car's frame (u along the car, front at u > 0, v down).
  facing = rng.choice([-1.0, 1.0])
  angle = np.deg2rad(rng.uniform(-7, 7))
  cos, sin = np.cos(angle), np.sin(angle)
  u = facing * ((x - cx) * cos + (y - ground) * sin)
  v = -(x - cx) * sin + (y - ground) * cos   # 0 on the ground, negative above it

  radius = length * rng.uniform(0.105, 0.14)
  clearance = radius * rng.uniform(0.45, 0.8)
  body_bottom = -clearance
  body_height = length * rng.uniform(0.15, 0.22)
  body_top = body_bottom - body_height
  half = length / 2
  nose = length * rng.uniform(0.02, 0.1)
  tail = length * rng.uniform(0.0, 0.06)

  # Shadow on the ground (background class, dark).
  shadow = _inside_ellipse(u, v, 0, 0, half * 1.05, radius * 0.35)
  image[shadow] *= rng.uniform(0.3, 0.7)

  paint = _hsv(rng.uniform(), rng.uniform(0, 1) ** 0.7 * (rng.uniform() > 0.25),
               rng.uniform(0.12, 1.0))
  shade = (1 + 0.35 * (v - body_top) / (body_bottom - body_top - 1e-6) * -1)[..., None]

  # Cabin: a trapezoid on the body; its top and sides are body (pillars, roof).
  cabin_height = length * rng.uniform(0.12, 0.19)
  cabin_rear = -half * rng.uniform(0.55, 0.95)
  cabin_front = half * rng.uniform(0.25, 0.55)
  roof_rear = cabin_rear + length * rng.uniform(0.0, 0.15)
  roof_front = cabin_front - length * rng.uniform(0.1, 0.2)
  cabin_top = body_top - cabin_height
  cabin = [(cabin_rear, body_top + 0.5), (roof_rear, cabin_top), (roof_front, cabin_top),
           (cabin_front, body_top + 0.5)]
  lower = [(-half, body_top + tail), (-half + tail, body_top), (half - nose, body_top),
           (half, body_top + nose), (half, body_bottom), (-half, body_bottom)]
  body = _inside_convex(u, v, lower) | _inside_convex(u, v, cabin)
  image[body] = (paint * shade[body])
  label[body] = BODY

  # Beltline highlight and a dark bumper strip: texture within the body class.
  belt = body & (np.abs(v - (body_top + 0.25 * body_height)) < 0.35)
  image[belt] = np.clip(image[belt] * 1.35 + 0.1, 0, 1)
  bumper_colour = _hsv(0, 0, rng.uniform(0.05, 0.35))
  bumper = body & (v > body_bottom - 0.22 * body_height) & (np.abs(u) > half - 0.12 * length)
  image[bumper] = bumper_colour

  # Windows: the cabin inset by the pillar width, split by the B-pillar.
  pillar = max(0.6, length * rng.uniform(0.025, 0.045))
  glass_top = cabin_top + pillar
  glass_bottom = body_top - 0.2
  def edge(u0, v0, u1, v1, at_v):
    return u0 + (u1 - u0) * (at_v - v0) / (v1 - v0)
  inner = [(edge(cabin_rear, body_top, roof_rear, cabin_top, glass_bottom) + pillar, glass_bottom),
           (edge(cabin_rear, body_top, roof_rear, cabin_top, glass_top) + pillar, glass_top),
           (edge(cabin_front, body_top, roof_front, cabin_top, glass_top) - pillar, glass_top),
           (edge(cabin_front, body_top, roof_front, cabin_top, glass_bottom) - pillar, glass_bottom)]
  b_pillar = (inner[0][0] + inner[3][0]) / 2 + rng.uniform(-0.1, 0.1) * length
  window = _inside_convex(u, v, inner) & (np.abs(u - b_pillar) > pillar / 2)
  tint = _hsv(rng.uniform(0.45, 0.7), rng.uniform(0, 0.5), rng.uniform(0.08, 0.55))
  streak = np.abs((u - b_pillar) + 0.8 * (v - glass_top) - rng.uniform(-3, 3)) < 0.6
  image[window] = tint
  image[window & streak] = np.clip(tint + 0.25, 0, 1)
  label[window] = WINDOW

  # Doors: the body panel under the windows, one or two, outlined by dark seams.
  wheel_base = half * rng.uniform(0.58, 0.72)
  door_rear = -wheel_base + radius * 1.15
  door_front = min(wheel_base - radius * 1.15, inner[3][0])
  door_bottom = body_bottom - rng.uniform(0.1, 0.25) * body_height
  door = (u > door_rear) & (u < door_front) & (v > body_top + 0.3) & (v < door_bottom) & body
  seam = 0.3
  seams = door & ((u < door_rear + seam) | (u > door_front - seam) | (v > door_bottom - seam))
  if rng.uniform() < 0.6:
    seams |= door & (np.abs(u - b_pillar) < seam / 2)
  image[seams] *= 0.45
  handle_v = body_top + 0.3 * body_height
  for centre in ((b_pillar + door_front) / 2, (door_rear + b_pillar) / 2):
    handle = door & (np.abs(u - centre + 0.5) < 0.9) & (np.abs(v - handle_v) < 0.3)
    image[handle] = _hsv(0, 0, rng.uniform(0.1, 0.9))
  label[door] = DOOR

  # Lights: head (front) and tail (rear).
  light_v = body_top + rng.uniform(0.2, 0.4) * body_height
  light_w, light_h = length * rng.uniform(0.04, 0.07), body_height * rng.uniform(0.15, 0.3)
  head = _inside_ellipse(u, v, half - light_w * 0.8, light_v + nose * 0.5, light_w, light_h)
  tail_light = _inside_ellipse(u, v, -half + light_w * 0.6, light_v, light_w * 0.8, light_h)
  head &= body
  tail_light &= body
  image[head] = _hsv(rng.uniform(0.1, 0.18), rng.uniform(0, 0.5), rng.uniform(0.8, 1.0))
  image[tail_light] = _hsv(rng.uniform(-0.04, 0.08), rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0))
  label[head | tail_light] = LIGHT

  # Wheels: a dark well in the body, then tyre and hub (sometimes in the body's paint).
  tyre_colour = _hsv(0, 0, rng.uniform(0.03, 0.25))
  hub_colour = (paint if rng.uniform() < 0.3 else
                _hsv(rng.uniform(), rng.uniform(0, 0.2), rng.uniform(0.35, 0.95)))
  hub_ratio = rng.uniform(0.45, 0.65)
  spokes = int(rng.integers(0, 6))
  for wheel_u in (-wheel_base, wheel_base):
    well = _inside_ellipse(u, v, wheel_u, -radius, radius * 1.2, radius * 1.2) & body
    image[well] = tyre_colour * rng.uniform(0.5, 1.5)
    label[well] = BODY
    du, dv = u - wheel_u, v + radius
    tyre = du ** 2 + dv ** 2 <= radius ** 2
    hub = du ** 2 + dv ** 2 <= (radius * hub_ratio) ** 2
    image[tyre] = tyre_colour
    image[hub] = hub_colour
    if spokes:
      theta = np.arctan2(dv, du) * spokes
      image[hub & (np.cos(theta) > 0.6)] *= 0.6
    label[tyre] = TYRE
    label[hub] = HUB

  image = image + rng.normal(0, rng.uniform(0, 0.03), image.shape)
  image = image.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
  blocks = label.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).transpose(0, 2, 1, 3)
  counts = (blocks.reshape(size, size, -1)[..., None] == np.arange(NUM_CLASSES)).sum(axis=2)
  mask = np.argmax(counts, axis=-1).astype(np.uint8)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8), mask


def render(seed: int, indices, size: int = 32, progress: str = '') -> tuple[np.ndarray, np.ndarray]:
  """indices [N] -> (images [N, size, size, 3] uint8, masks [N, size, size] uint8).

  Image i depends only on (seed, i). `progress`: a progress bar's label (none if empty)."""
  images, masks = [], []
  for index in tqdm(np.asarray(indices).reshape(-1), desc=progress, unit='img',
                    disable=not progress):
    image, mask = render_one(np.random.default_rng([seed, int(index)]), size)
    images.append(image)
    masks.append(mask)
  return np.stack(images), np.stack(masks)
