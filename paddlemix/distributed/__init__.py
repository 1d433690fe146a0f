"""What multi-device training needs beyond paddleformers: degree checks before the model loads (`checks`) and the
CPU stand-ins for the collectives and kernels Paddle's CPU build lacks (`cpu_collectives`)."""
