"""Experiments that test the articles' claims by training small networks on CPU."""
