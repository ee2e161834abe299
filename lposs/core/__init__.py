"""The maths of LPOSS, with no model in it.

    propagation  label propagation: (I - alpha S) F = Y by batched conjugate gradient (and the closed form)
    graphs       the patch kNN x spatial graph, and the matrix-free pixel graph of LPOSS+ (Lab colour stencil)
    windows      the resize rule, the sliding-window layout and the window -> canvas merge
    refine       LPOSS+'s pixel refiners: the released one, "best" (tempered), "relaxed", PAMR
    pamr         PAMR, NACLIP's refiner
    tlp          PEARL's text-aware label propagation, a post-step on dense logits
    scoring      scores -> labels: LPOSS's synonym max and the SCLIP family's softmax with thresholds
    metrics      mIoU and Boundary IoU over a dataset, on the CPU or on the device
    color        sRGB -> CIELAB, and the models' input normalisation constants
"""
