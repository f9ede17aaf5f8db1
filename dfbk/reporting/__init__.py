"""aggregate stage: comparison/ablation tables (`tables`) and qualitative figures (`figures`)."""
