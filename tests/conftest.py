"""Tests never touch the network: timm's hub is offline and models are built with random weights."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
