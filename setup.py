"""ament_python package setup for ser_node (also a plain pip-installable package)."""
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "ser_node"
HERE = Path(__file__).parent


def requirements(name: str) -> list[str]:
    """Pinned requirements from requirements/<name>.txt, without comments."""
    lines = (HERE / "requirements" / f"{name}.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["data/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/models", glob("models/*.onnx") + glob("models/*.json") + glob("models/*.md")),
        (f"share/{PACKAGE}/demo", glob("demo/*.wav")),
    ],
    python_requires=">=3.10",
    install_requires=requirements("runtime"),
    extras_require={"train": requirements("train"), "test": requirements("test")},
    zip_safe=True,
    maintainer="ser_node maintainers",
    maintainer_email="ser-node@example.org",
    description="Speech emotion recognition node for ROS 2 (DeepSpectrum + attention, ONNX Runtime).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ser_node = ser_node.ros.node:main",
            "ser_demo = ser_node.ros.demo:main",
            "ser_train = ser_node.train_cli:main",
            "ser_export = ser_node.export_cli:main",
            "ser_trainer = ser_node.ros.trainer_node:main",
            "ser_bag = ser_node.bag_cli:main",
        ],
    },
)
