from pathlib import Path

from tools import check_disk_space


def test_existing_ancestor_walks_up_to_a_real_folder(tmp_path: Path) -> None:
    assert check_disk_space.existing_ancestor(tmp_path / "venv" / "lib") == tmp_path.resolve()
    assert check_disk_space.existing_ancestor(tmp_path) == tmp_path.resolve()


def test_room_enough_passes(tmp_path: Path) -> None:
    assert check_disk_space.shortfall(tmp_path / ".venv", need_gb=0.0) is None
    assert check_disk_space.main([str(tmp_path / ".venv"), "--need-gb", "0"]) == 0


def test_full_disk_names_place_free_space_and_fix(tmp_path: Path, capsys) -> None:
    message = check_disk_space.shortfall(tmp_path / ".venv", need_gb=1e9)
    assert message is not None
    assert str(tmp_path.resolve()) in message and "GB free" in message and "make VENV=" in message
    assert check_disk_space.main([str(tmp_path / ".venv"), "--need-gb", "1e9"]) == 1
    assert "not enough disk space" in capsys.readouterr().err
