"""Training: image folders or built-in data sets -> a Siamese embedding tower -> a model bundle.

Modules, one job each:
    splits     identity splits (holdout / validation / train), seeded, disjoint
    samplers   PK batches for in-batch mining, balanced genuine/impostor pair batches
    augment    per-profile random augmentation in TensorFlow (no flips for signatures)
    pipeline   the tf.data input pipeline built from a sampler and the augmentation
    losses     contrastive, triplet (batch-all / batch-hard / semi-hard), N-pair
    towers     the embedding towers and the flip test-time-augmentation wrapper
    trainer    the training loop: early stopping on validation EER (calibration.metrics), checkpoint and resume
    cli        `python -m training`
"""
