"""qarm.data"""
