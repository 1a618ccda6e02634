"""The audit engine: plan the shifts, run images x shifts through the model in batches, feed every metric.

``runner`` holds :func:`audit`; ``strategies`` picks dense, polyphase or early exit; ``passes`` lays out each batch's
(image, shift) pairs; ``forward`` runs the model on them; ``polyphase`` evaluates every circular shift at once;
``resume`` and ``distributed`` save and shard a run; ``observers`` are the plug-in protocols.
"""
