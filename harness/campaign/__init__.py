"""Many runs and their orchestration: bisection, mutation testing, the CI matrix and patch
submissions."""
