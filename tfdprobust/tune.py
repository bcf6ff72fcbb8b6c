"""``python -m tfdprobust.tune``: the (R, eta) search CLI. The code lives in :mod:`tfdprobust.tuning`.

    python -m tfdprobust.tune --noise=7.1 --clip_grid=0.1,1,10 --lr_grid=0.1,1,10 \\
        --objective=robust --tuning_dir=tuning --data_dir=../shared/data

Distributed (Keras Tuner's chief/worker mode; same flags in every process)::

    KERASTUNER_TUNER_ID=chief  KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 python -m tfdprobust.tune ...
    KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 python -m tfdprobust.tune ...
"""

if __name__ == "__main__":
    from tfdprobust.tuning import cli

    cli.run()
else:  # ``from tfdprobust import tune`` keeps the public API (loaded lazily)
    from tfdprobust.tuning import *  # noqa: F401,F403
    from tfdprobust.tuning import __all__  # noqa: F401
