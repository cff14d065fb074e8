"""Prompt samplers chosen by `curriculum.name`; each keeps a serialisable state."""
from curricula.uniform import UniformSampler

SAMPLERS = {"uniform": UniformSampler}
