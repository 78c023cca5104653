"""sdvar"""
