"""MESS's published reference rows (zero-shot mIoU, percent), for the table beside ours.

Source: the MESS leaderboard, file LEADERBOARD.md of github.com/blumenstiel/mess-benchmark (the site
https://blumenstiel.github.io/mess-benchmark/leaderboard/), commit 0936b07c994d149250fb78b2d25ddc98099e224a
(2024-08-25), section "Zero-shot semantic segmentation": the "Dataset results" table (one value per
dataset, in MESS's column order, then "Mean") and the "Domain results" table. Numbers are copied as
printed there (two decimals, trailing zeros dropped). "Random" is MESS's lower bound: the expected mIoU
of predictions with a uniform class distribution.
"""

from __future__ import annotations

SOURCE = ("MESS leaderboard, LEADERBOARD.md of github.com/blumenstiel/mess-benchmark @ 0936b07 "
          "(https://blumenstiel.github.io/mess-benchmark/leaderboard/)")

# MESS's column order (mess/evaluation/mess_evaluation.py dataset_names, PAXRay combined as PAXRay-4)
COLUMNS = ("bdd100k", "dark_zurich", "mhp_v1", "foodseg103", "atlantis", "dram", "isaid", "isprs_potsdam",
           "worldfloods", "floodnet", "uavid", "kvasir_instrument", "chase_db1", "cryonuseg", "paxray",
           "corrosion_cs", "deepcrack", "pst900", "zerowaste", "suim", "cub_200", "cwfid")

# "Dataset results": 22 datasets, then the printed mean
_DATASET_ROWS = {
    "Random": "1.48 1.31 1.27 0.23 0.56 2.16 0.56 8.02 18.43 3.39 5.18 27.99 27.25 31.25 31.53 9.3 26.52 4.52 "
              "6.49 5.3 0.06 13.08 10.27",
    "ZSSeg-B": "32.36 16.86 7.08 8.17 22.19 33.19 3.8 11.57 23.25 20.98 30.27 46.93 37.0 38.7 44.66 3.06 25.39 "
               "18.76 8.78 30.16 4.35 32.46 22.73",
    "SAN-B": "37.4 24.35 8.87 19.27 36.51 49.68 4.77 37.56 31.75 37.44 41.65 69.88 17.85 11.95 19.73 3.13 50.27 "
             "19.67 21.27 22.64 16.91 5.67 26.74",
    "CAT-Seg-B": "44.58 27.36 20.79 21.54 33.08 62.42 15.75 41.89 39.47 35.12 40.62 70.68 25.38 25.63 44.94 13.76 "
                 "49.14 21.32 20.83 39.1 3.4 45.47 33.74",
    "CAT-Seg-L": "45.83 33.1 30.03 30.47 33.6 66.54 16.09 51.42 49.86 39.84 42.02 79.4 24.99 35.06 54.5 16.87 "
                 "31.42 25.26 30.62 53.94 9.24 39.0 38.14",
}

# "Domain results": General, Earth Monitoring, Medical Sciences, Engineering, Agriculture and Biology, Mean
_DOMAIN_ROWS = {
    "Random": "1.17 7.11 29.51 11.71 6.14 10.27",
    "ZSSeg-B": "19.98 17.98 41.82 14.0 22.32 22.73",
    "SAN-B": "29.35 30.64 29.85 23.58 15.07 26.74",
    "CAT-Seg-B": "34.96 34.57 41.65 26.26 29.32 33.74",
    "CAT-Seg-L": "39.93 39.85 48.49 26.04 34.06 38.14",
}
DOMAIN_COLUMNS = ("General", "Earth Monitoring", "Medical Sciences", "Engineering", "Agriculture and Biology",
                  "Mean")


def reference_datasets() -> dict[str, dict[str, float]]:
    """{model: {registry name: mIoU, ..., "Mean": mIoU}} as printed in the leaderboard's dataset table."""
    return {model: dict(zip(COLUMNS + ("Mean",), map(float, row.split()), strict=True))
            for model, row in _DATASET_ROWS.items()}


def reference_domains() -> dict[str, dict[str, float]]:
    """{model: {domain: mIoU, ..., "Mean": mIoU}} as printed in the leaderboard's domain table."""
    return {model: dict(zip(DOMAIN_COLUMNS, map(float, row.split()), strict=True))
            for model, row in _DOMAIN_ROWS.items()}
