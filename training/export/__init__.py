"""Exports of an MTCC build into the layouts other trainers read.

``mtcc export bya OUT DEST`` (:mod:`.bya`) writes the per-clip folders that the Bind-Your-Avatar authors'
released trainer reads (``ConsisID_Dataset`` in their ``models/dataloader.py``).
"""
