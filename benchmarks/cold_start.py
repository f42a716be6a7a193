def run(quick: bool = False) -> dict:
    return {}
