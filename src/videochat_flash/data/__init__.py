"""Synthetic data: moving-shape videos, annotations and stage mixtures (`synth`), scene rendering (`shapes`),
question templates (`tasks`) and answer scoring (`scoring`)."""
