"""The released LPOSS's settings (its configs and the paper), the one place their values are written.

`lposs.settings` takes its defaults from here, and so do the maths functions' keyword defaults, the
`reference` pixel refiner and the `lposs` protocol: change a value here and every one of them follows.
"""

K, GAMMA, SIGMA, P = 400, 3.0, 0.01, 1.0  # the patch graph: kNN, cosine power, spatial decay, its power
ALPHA, MAXITER, TOL = 0.95, 10, 1e-6  # label propagation on both graphs: (I - alpha S) F = Y, 10 CG steps
PIXEL_R, PIXEL_TAU = 13, 0.01  # the pixel graph of LPOSS+: 13x13 window, Lab-colour temperature
CROP, STRIDE, SHORT_SIDE, LONG_SIDE = 224, 112, 448, 2048  # the sliding windows and the resize rule
