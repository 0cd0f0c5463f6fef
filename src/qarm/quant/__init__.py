"""qarm.quant"""
