"""Training and sampling entry points shared by both backends (configs, data, checkpoints,
evaluation), plus the toy problems with exact teachers used by the demo and the tests."""
