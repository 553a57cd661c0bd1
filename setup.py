# Reads settings.ini (nbdev 2's single source of package metadata). Written without
# pkg_resources, which setuptools >= 81 no longer ships.
from configparser import ConfigParser
from pathlib import Path
import setuptools
from setuptools.command.build_py import build_py

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']
licenses = {'apache2': 'Apache-2.0'}  # settings.ini's nbdev name -> SPDX expression (PEP 639; the text is in LICENSE)
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']

class build_py_with_notebooks(build_py):
    """Also copy nbs/experiments/*.ipynb and nbs/explore/*.ipynb into the build as clvq_nb/nbs/<folder>/ (package
    data made at build time only, so clvq_nb/ in the repository stays exactly what nbdev_export writes);
    clvq_nb.notebooks finds them there after `pip install`. An editable install reads nbs/ from the checkout."""
    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False): return
        for folder in ('experiments', 'explore'):
            nbs = sorted(Path(cfg['nbs_path'], folder).glob('*.ipynb'))
            if not nbs: raise FileNotFoundError(f"no notebooks in {cfg['nbs_path']}/{folder}: build from a checkout or an sdist made by this setup.py")
            out = Path(self.build_lib, cfg['lib_path'], 'nbs', folder)
            self.mkpath(str(out))
            for nb in nbs: self.copy_file(str(nb), str(out / nb.name))

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    license_expression=licenses[cfg['license']], author=cfg['author'], author_email=cfg['author_email'],
    keywords=cfg['keywords'].split(), url=cfg['git_url'],
    long_description=open('README.md', encoding='utf-8').read(), long_description_content_type='text/markdown',
    classifiers=[f"Development Status :: {statuses[int(cfg['status'])]}", f"Intended Audience :: {cfg['audience']}",
                 f"Natural Language :: {cfg['language']}",
                 'Programming Language :: Python :: 3'],
    packages=setuptools.find_packages(include=['clvq_nb', 'clvq_nb.*']),
    include_package_data=True, license_files=['LICENSE'], cmdclass={'build_py': build_py_with_notebooks}, python_requires=f">={cfg['min_python']}",
    install_requires=cfg['requirements'].split(),
    extras_require={'dev': cfg['dev_requirements'].split()},
    entry_points={'console_scripts': cfg['console_scripts'].split(), 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
