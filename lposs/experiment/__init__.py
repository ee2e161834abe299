"""What the DVC stages run (notebooks/*.ipynb import this layer only).

    parameters   params.yaml read and validated once; the notebooks' parameters
    staging      stage 1: the staged index of a dataset; prompts under a protocol
    store        the on-disk feature store and its manifest check
    extraction   features of images -> shards; the one store-filling loop
    evaluation   the one evaluation loop: settings x images -> metric counts -> records
    ablation     stage 3: sweeps over a feature store
    streaming    evaluation without a store: python -m lposs.experiment.streaming voc21 --device cuda
    executors, sharded    the same work on local processes, SLURM or torchrun, in resumable shards
    records      the JSON records and timings the stages write
    results, tables, mess_*    stage 4: collected results, the results table, MESS's tables
    captions     the demo note and figure titles that carry it
    paper        lposs paper | mess: the paper's or MESS's setting as a DVC experiment
    sizing       lposs paper --check: the store's size per dataset beside the free disk
    commands     the `lposs` subcommands this layer serves (paper, mess, data, stream)
    run_notebook papermill for the stages (dvc.yaml), the kernel's sockets encrypted
    dvc_views    dvc plots show / diff offline, and what to commit as the experiments' baseline

Submodules are imported one by one (nothing here imports them), so a stage depends only on what it uses.
"""
