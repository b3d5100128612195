"""(shim: replaced by the mesh module)"""


def initialize_distributed(coordinator=None, num_processes=None, process_id=None):
    return None


def is_main_process() -> bool:
    return True


def check_devices(devices, batch_size) -> None:
    return None
