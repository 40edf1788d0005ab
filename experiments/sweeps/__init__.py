"""Ablation sweeps: points x seeds as runs, trained in vmapped groups, tabulated and plotted."""
