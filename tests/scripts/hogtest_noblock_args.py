"""No PEP 723 block, and no numpy import: what a call needs comes from its arguments."""


def total(values):
    return float(values.sum())
