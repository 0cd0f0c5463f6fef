"""qarm.serve"""
