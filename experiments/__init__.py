"""Everything with side effects: data, training, sampling, evaluation, benchmarks."""
