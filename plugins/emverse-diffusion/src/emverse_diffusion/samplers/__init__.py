"""Samplers: one readable file each (ddpm, ddim, dpmpp_2m, euler); they hold no weights."""
