"""Small helpers with no GPTQ in them: progress bars, returning freed memory
to the OS, writing a folder all or nothing."""
