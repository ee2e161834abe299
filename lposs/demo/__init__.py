"""The embedded offline demo: generated outdoor scenes with ground truth, and two stand-in backbones.

What the demo simulates (say it wherever its numbers appear):
- The scenes are *synthetic*: flat layered landscapes (sky, water, sand, grass, road, buildings, trees,
  cows) painted with class-dependent colours and textures whose distributions overlap (sky/water,
  grass/tree, road/building/cow), plus per-image lighting changes. Ground truth comes from the painter.
- `DemoVLM` stands in for CLIP. Its "text embedding" of a class is a fixed basis vector of the demo
  vocabulary; its dense feature for a 16x16 patch is a soft assignment of the patch's mean colour and
  contrast to each class's nominal colour and contrast (the painter's palette, i.e. "what the model
  learned about the concept"), blurred towards the window's average (the global-context leak of
  MaskCLIP features) and jittered patch to patch by a fixed random projection of the patch's fine
  pixel pattern (MaskCLIP's dense features are noisy in the same way). So the seeds
  `features @ text.T` are right more often than not, but blotchy.
- `DemoVM` stands in for DINO: random Fourier features of patch colour and texture statistics, whose
  cosine approximates a Gaussian kernel on appearance. Good at grouping, blind to class names.
- Neither backbone ever reads the ground truth, is trained, or downloads anything. Numbers on the demo
  show what label propagation does to noisy patch seeds; they say nothing about CLIP or DINO.

Scenes are drawn with the legacy `numpy.random.RandomState` (a stream numpy keeps stable across
versions) and only exactly-rounded float operations, and written by a tiny PNG encoder with stored
(uncompressed) deflate blocks, so the same seed gives the same bytes (no zlib or libm in the path):
`data.dvc` pins them.

    python -m lposs.demo --out data/demo            # regenerate the pinned demo set

Rooms: `scenes` (the painter and the dataset writer), `backbones` (the two stand-ins).
"""

from .backbones import DemoVLM, DemoVM
from .scenes import DEMO_CLASSES, generate_demo

__all__ = ["DEMO_CLASSES", "DemoVLM", "DemoVM", "generate_demo"]
