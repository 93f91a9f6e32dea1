"""ament_python package setup for ser_node (also a plain pip-installable package)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ser_node"

# Ranges, not pins: on a robot this package shares numpy & co. with the ROS distro's Python packages. The lower
# bounds are the oldest set tested (requirements/runtime-lowest.txt, scripts/compat_check.sh); the exact versions
# that CI and scripts/setup.sh install are pinned in requirements/*.txt. The run time never imports PyYAML (ROS
# parameter files are read by rcl), torch, tqdm or sklearn: test_runtime_install.py holds it to that.
RUNTIME = ["numpy>=1.21.6", "onnxruntime>=1.18.1", "soundfile>=0.12.1", "soxr>=0.3.7", "webrtcvad-wheels>=2.0.10"]
TRAIN = ["pyyaml>=5.4", "torch>=2.1", "onnx>=1.15", "onnxscript>=0.1", "scikit-learn>=1.3", "matplotlib>=3.5",
         "tqdm>=4.60", "rosbags>=0.10", "mcap>=1.1", "audiomentations>=0.40", "pyroomacoustics>=0.7.4"]
TEST = ["pytest>=7", "librosa>=0.10"]
# The openSMILE teacher (training only; non-commercial licence, so it is an extra of its own).
TEACHER = ["opensmile>=2.5"]


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
    install_requires=RUNTIME,
    extras_require={"train": TRAIN, "teacher": TEACHER, "test": TEST},
    zip_safe=True,
    maintainer="ser_node maintainers",
    maintainer_email="ser-node@example.org",
    description="Speech emotion recognition node for ROS 2 (DeepSpectrum + attention, ONNX Runtime).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ser_node = ser_node.ros.node:main",
            "ser_demo = ser_node.ros.demo:main",
            "ser_train = ser_node.cli.train:main",
            "ser_train_voice = ser_node.cli.train_voice:main",
            "ser_export = ser_node.cli.export:main",
            "ser_trainer = ser_node.ros.trainer_node:main",
            "ser_bag = ser_node.cli.bag:main",
            "ser_empathy = ser_node.ros.empathy:main",
            "ser_enroll_voice = ser_node.cli.enroll_voice:main",
        ],
    },
)
