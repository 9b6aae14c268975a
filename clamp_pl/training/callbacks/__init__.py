"""Lightning callbacks: prediction pictures and score maps, run safety (resume, preemption, non-finite loss), a
progress bar that does not sync the GPU every step."""
