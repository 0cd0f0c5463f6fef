"""qarm.align"""
