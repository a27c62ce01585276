"""What the README tells a new user to run: the data-root layouts it promises, the options its commands show,
and the costs they announce."""
import shutil

import torch

from matchnet.data import load_omniglot
from matchnet.data.omniglot import omniglot_dir


def test_data_root_finds_omniglot_in_either_layout(omniglot_tree, tmp_path):
    """--data-root DIR finds DIR/omniglot-py (the README's layout) and DIR/omniglot/omniglot-py (a data root
    with one folder per dataset, as ../shared/data has it)."""
    nested = tmp_path / "root"
    shutil.copytree(omniglot_tree / "omniglot-py", nested / "omniglot" / "omniglot-py")
    assert omniglot_dir(nested) == nested / "omniglot" / "omniglot-py"
    direct = load_omniglot(omniglot_tree, strict=False, cache=False)
    found = load_omniglot(nested, strict=False, cache=False)
    assert found.names == direct.names and torch.equal(found.images, direct.images)
    # both present: the README's own layout wins; neither: the README's layout is named (and downloaded to)
    shutil.copytree(omniglot_tree / "omniglot-py", nested / "omniglot-py")
    assert omniglot_dir(nested) == nested / "omniglot-py"
    assert omniglot_dir(tmp_path / "empty") == tmp_path / "empty" / "omniglot-py"
