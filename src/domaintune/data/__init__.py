"""Data: readers with file:line errors, validation, splitting and label maps."""

from domaintune.data.readers import Example, Problem, ReadOptions, read_examples, read_texts
from domaintune.data.splits import DataError, LabelMap, Splits, options_from, prepare_data, stratified_split

__all__ = ["DataError", "Example", "LabelMap", "Problem", "ReadOptions", "Splits", "options_from",
           "prepare_data", "read_examples", "read_texts", "stratified_split"]
