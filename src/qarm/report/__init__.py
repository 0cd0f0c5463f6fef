"""qarm.report"""
