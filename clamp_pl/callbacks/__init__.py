"""Lightning callbacks: prediction pictures and score maps, run safety (resume, preemption, non-finite loss)."""
