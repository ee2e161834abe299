"""The models: what turns windows into seeds and graph features.

    heads        the training-free dense CLIP heads (MaskCLIP, SCLIP, ClearCLIP, NACLIP, ProxyCLIP): HEADS
    backbones    DenseCLIP (a head + the prompt-ensemble text classifier), VisionFeatures (timm q/k/v/tokens)
    loading      which weights go with which model; loading them, or failing fast offline with the fix
    protocols    each release's evaluation protocol: background rule, constants, windows, class files
    factory      the one door: BackboneSpec -> create_backbones (demo, random, pretrained, checkpoints)
"""
