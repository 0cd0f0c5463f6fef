"""qarm.rank"""
