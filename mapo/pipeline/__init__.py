"""Entry points: validate a config, build data/model/engine/trainer, train, evaluate, export."""
