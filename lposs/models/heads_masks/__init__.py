"""Dense CLIP heads that read a class-agnostic mask model's output (Trident, CorrCLIP)."""
