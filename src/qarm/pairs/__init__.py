"""qarm.pairs"""
