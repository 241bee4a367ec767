// The interactive report: filters (model, backend, device, validity), the ITL-deadline and
// energy-budget sliders, Pareto views drawn with Plotly, a comparison of picked cells and a
// per-cell detail. Every number and label comes formatted from the embedded data
// (analysis/report_data.py, the column registry); nothing here is fetched.
(function(){
var D=JSON.parse(document.getElementById('report-data').textContent);
var FACETS=D.facets,byId={},picked=[],GL_FROM=2000;
// WebGL where the browser has it (else SVG, slower past a few thousand points).
var HAS_GL=(function(){try{var c=document.createElement('canvas');
  return !!(c.getContext('webgl')||c.getContext('experimental-webgl'));}catch(e){return false;}})();
D.cells.forEach(function(c){byId[c.id]=c;});
var tables=window.llmEnergyTables(D);  // templates/table.js
function el(id){return document.getElementById(id);}
// A cell's [value, low, high] of a metric: its values are listed in D.metrics' order (null: none).
var MI={};Object.keys(D.metrics).forEach(function(m,i){MI[m]=i;});
function nums(c,m){return c.values[MI[m]];}
function val(c,m){var v=nums(c,m);return v?v[0]:null;}
// A cell's value of a facet: model, backend, device, or a setting or workload axis.
function facetValue(c,f){return f in c.axes?c.axes[f]:c[f];}
function unique(key){var s={};D.cells.forEach(function(c){s[facetValue(c,key)]=1;});
  return Object.keys(s).sort(function(a,b){var x=Number(a),y=Number(b);
    return isNaN(x)||isNaN(y)||a===''||b===''?a.localeCompare(b):x-y;});}

function buildFacets(){
  var box=el('facet-filters');
  FACETS.forEach(function(f){
    var g=document.createElement('span');g.className='facet';g.textContent=f+': ';
    unique(f).forEach(function(v){
      var l=document.createElement('label'),i=document.createElement('input');
      i.type='checkbox';i.checked=true;i.dataset.facet=f;i.value=v;
      i.addEventListener('change',apply);l.appendChild(i);l.appendChild(document.createTextNode(' '+v));
      g.appendChild(l);});
    box.appendChild(g);});
}
var facetState={};  // facet -> value -> ticked, read once per change (not per cell)
function readFacets(){
  facetState={};
  document.querySelectorAll('input[data-facet]').forEach(function(b){
    (facetState[b.dataset.facet]=facetState[b.dataset.facet]||{})[b.value]=b.checked;});
}
function facetOk(c){
  return FACETS.every(function(f){var s=facetState[f];return !s||s[facetValue(c,f)]!==false;});
}
function checked(id){var e=el(id);return !e||e.checked;}
// Shown at all: the facet filters and the validity switches.
function visible(c){
  if(!facetOk(c))return false;
  if(c.flagged&&!checked('show-flagged'))return false;
  if(c.stable===false&&!checked('show-unstable'))return false;
  if(c.source!=='measured'&&!checked('show-reference'))return false;
  return true;
}
function itlMetric(){return D.itl[el('itl-percentile').value];}
// Within the ITL deadline and the energy budget (a missing value does not count against).
function meets(c){
  var x=val(c,itlMetric()),e=val(c,D.energy);
  return !((x!==null&&x>parseFloat(el('itl-deadline').value))||
           (e!==null&&e>parseFloat(el('energy-budget').value)));
}
// Per model, among its measured successful cells shown and within both limits: the lowest
// energy per token (what the ITL deadline moves: the cheapest within it) and the highest
// throughput (what the energy budget moves: the fastest it affords; the cheapest under a
// budget is the cheapest overall). Ties: the lower cell id.
var best={energy:{},speed:{}};
function findBest(){
  best={energy:{},speed:{}};
  D.cells.forEach(function(c){
    if(!c.ok||c.source!=='measured'||!visible(c)||!meets(c))return;
    var e=val(c,D.energy),t=val(c,D.throughput),b;
    if(e!==null){b=best.energy[c.model];
      if(!b||e<val(b,D.energy)||(e===val(b,D.energy)&&c.id<b.id))best.energy[c.model]=c;}
    if(t!==null){b=best.speed[c.model];
      if(!b||t>val(b,D.throughput)||(t===val(b,D.throughput)&&c.id<b.id))best.speed[c.model]=c;}
  });
}
function bestIds(kind){return Object.keys(best[kind]).sort().map(function(m){return best[kind][m].id;});}
var MARKS=[['energy','lowest J/token within the limits','star','#D55E00'],
           ['speed','fastest within the limits','star-triangle-up','#0072B2']];
// A metric as text: the registry's decimals, "value (low–high)" with the 95% interval
// across cycles where there is one, "—" for none (the same text as fmt_metric in Python).
function fmtMetric(c,m){var v=nums(c,m),d=D.metrics[m].digits;
  if(!v||v[0]===null)return '—';
  return v[0].toFixed(d)+(v[1]!==null&&v[2]!==null?' ('+v[1].toFixed(d)+'–'+v[2].toFixed(d)+')':'');}
function esc(s){return String(s).replace(/&/g,'&amp;').replace(/</g,'&lt;').replace(/>/g,'&gt;');}
// Plotly hover (its HTML subset; names escaped), built here from the cell's record (not
// embedded: ~1 KB a cell) and kept: the configuration, the headline numbers, the flags.
function hoverText(c){
  if(c._hover!==undefined)return c._hover;
  var s=Object.keys(c.settings).map(function(k){return esc(k)+'='+esc(c.settings[k]);}).join(', ');
  var lines=['<b>'+esc(c.model)+'</b> · '+esc(c.backend)+' · '+esc(c.device_name),
    esc(c.source)+' · '+(c.source==='measured'?'cell':'row')+' '+esc(c.id),
    s||'default settings','workload: '+esc(c.workload)].concat(c.note?[esc(c.note)]:[]);
  Object.keys(D.metrics).forEach(function(m){var t=fmtMetric(c,m);
    if(t!=='—')lines.push(D.metrics[m].label+': '+t);});
  lines.push('leaderboard rule: '+(c.stable===null?'—':c.stable?'stable':
    'unstable'+(c.unstable_reason?' ('+esc(c.unstable_reason)+')':''))+'; flags: '+(c.flags.map(esc).join('; ')||'none'));
  return (c._hover=c.ok?lines.join('<br>'):'');
}
function label(m){var x=D.metrics[m];return x.label+(x.label.indexOf(x.unit)<0&&x.unit?' ('+x.unit+')':'');}

// Past MERGE_FROM series (more than a legend can name) the points are one trace per kind
// (measured, reference) coloured per series and the frontiers one line with gaps: Plotly's
// time grows with the number of traces (at 100 models × 2 charts, ~4 s a redraw), not of
// points; the hover still names each configuration.
var MERGE_FROM=12,COLORS=['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b',
  '#e377c2','#7f7f7f','#bcbd22','#17becf'];
function seriesKey(c){return c.source==='measured'?c.model+' · '+c.backend:c.source+' · '+c.model;}
var SERIES={};  // series -> colour index, fixed for the page (a filter does not recolour)
(function(){var k={};D.cells.forEach(function(c){k[seriesKey(c)]=1;});
  Object.keys(k).sort().forEach(function(key,i){SERIES[key]=i;});})();
function pointTrace(type,name,g,xm,ref,colors){
  var t={type:type,mode:'markers',name:name,x:g.map(function(c){return val(c,xm);}),
    y:g.map(function(c){return val(c,D.energy);}),customdata:g.map(function(c){return c.id;}),
    text:g.map(hoverText),hovertemplate:'%{text}<extra></extra>',
    marker:{symbol:g.map(function(c){return (ref(c)?'diamond':'circle')+(meets(c)?'':'-open');}),
            size:g.map(function(c){return (ref(c)?12:10)-(type==='scattergl'?4:0);}),
            opacity:g.map(function(c){return meets(c)?1:0.35;}),
            line:{width:g.map(function(c){return picked.indexOf(c.id)>=0?3:1;}),color:'#222'}}};
  if(colors)t.marker.color=g.map(function(c){return COLORS[SERIES[seriesKey(c)]%COLORS.length];});
  return t;
}
function chartTraces(xm,front){
  var groups={},order=[],fronts={},n=0;
  D.cells.forEach(function(c){
    if(!c.ok||!visible(c)||val(c,xm)===null||val(c,D.energy)===null)return;
    var key=seriesKey(c);n++;
    if(!groups[key]){groups[key]={c:[],ref:c.source!=='measured'};order.push(key);}
    groups[key].c.push(c);
    if(c.frontier[front])(fronts[c.model]=fronts[c.model]||[]).push(c);
  });
  // Past GL_FROM points, WebGL (one canvas) instead of one SVG element per point.
  var type=n>GL_FROM&&HAS_GL?'scattergl':'scatter',out=[];
  function isRef(c){return c.source!=='measured';}
  if(order.length>MERGE_FROM){
    [[false,'measured configurations ('],[true,'reference rows (']].forEach(function(k){
      var keys=order.filter(function(key){return groups[key].ref===k[0];}),g=[];
      keys.forEach(function(key){g=g.concat(groups[key].c);});
      if(g.length)out.push(pointTrace(type,k[1]+keys.length+' series; colour per series, hover names each)',
        g,xm,isRef,true));});
  }else{
    out=order.map(function(key){return pointTrace(type,key,groups[key].c,xm,isRef,false);});
  }
  var models=Object.keys(fronts).sort(),lx=[],ly=[];
  models.forEach(function(model){
    var f=fronts[model].slice().sort(function(a,b){return val(a,xm)-val(b,xm);});
    var x=f.map(function(c){return val(c,xm);}),y=f.map(function(c){return val(c,D.energy);});
    if(order.length<=MERGE_FROM){out.push({type:'scatter',mode:'lines',name:'Pareto frontier · '+model,
      hoverinfo:'skip',x:x,y:y,line:{dash:'dot',width:2}});return;}
    if(lx.length){lx.push(null);ly.push(null);}
    lx=lx.concat(x);ly=ly.concat(y);
  });
  if(lx.length)out.push({type:'scatter',mode:'lines',name:'Pareto frontiers (one per model)',
    hoverinfo:'skip',x:lx,y:ly,connectgaps:false,line:{dash:'dot',width:2,color:'#444'}});
  MARKS.forEach(function(k){
    var g=bestIds(k[0]).map(function(id){return byId[id];}).filter(function(c){return val(c,xm)!==null;});
    if(g.length)out.push({type:'scatter',mode:'markers',name:k[1],ids:g.map(function(c){return c.id;}),
      x:g.map(function(c){return val(c,xm);}),y:g.map(function(c){return val(c,D.energy);}),
      hoverinfo:'skip',marker:{symbol:k[2]+'-open',size:22,line:{width:2.5,color:k[3]}}});
  });
  return out;
}
function drawCharts(){
  [['chart-throughput',D.throughput,'throughput'],['chart-latency',D.frontiers.latency,'latency']]
  .forEach(function(a){
    var layout={margin:{t:30,r:10,b:40,l:60},hovermode:'closest',legend:{orientation:'h',y:-0.25,font:{size:10}},
      title:{text:label(D.energy)+' vs '+label(a[1]),font:{size:13}},
      xaxis:{title:{text:label(a[1])}},yaxis:{title:{text:label(D.energy)}}};
    Plotly.react(a[0],chartTraces(a[1],a[2]),layout,{displaylogo:false,responsive:true});
  });
}
function apply(){
  readFacets();
  el('itl-deadline-value').textContent=el('itl-deadline').value;
  el('energy-budget-value').textContent=el('energy-budget').value;
  var shown=0,total=0;
  findBest();
  var marked={energy:bestIds('energy'),speed:bestIds('speed')};
  // A table row stays when shown at all and, with numbers, within the deadline and budget.
  function keep(c){return visible(c)&&(!c.ok||meets(c));}
  D.cells.forEach(function(c){if(c.ok&&c.source==='measured'){total++;if(keep(c))shown++;}});
  tables.render(keep,picked,marked);
  el('shown-count').textContent=shown+' of '+total+' configurations shown';
  drawCharts();
}
function resetItl(){
  var m=itlMetric(),itl=el('itl-deadline');
  var vals=D.cells.map(function(c){return val(c,m);}).filter(function(v){return v!==null;});
  if(vals.length){itl.max=String(Math.max.apply(null,vals)*1.001);itl.value=itl.max;}
  apply();
}

function togglePick(id){
  var i=picked.indexOf(id);if(i>=0)picked.splice(i,1);else picked.push(id);
  document.querySelectorAll('input.pick').forEach(function(b){b.checked=picked.indexOf(b.dataset.cell)>=0;});
  renderCompare();drawCharts();
}
function renderCompare(){
  var box=el('compare');
  if(picked.length<2){box.innerHTML='<p>Tick two or more configurations in the table (or click points in a chart) to compare them side by side.</p>';return;}
  var cells=picked.map(function(id){return byId[id];}),keys={};
  cells.forEach(function(c){Object.keys(c.settings).forEach(function(k){keys[k]=1;});});
  var rows=[['model',function(c){return c.model;}],['backend',function(c){return c.backend;}],
    ['source',function(c){return c.source;}],['device',function(c){return c.device_name;}]];
  Object.keys(keys).sort().forEach(function(k){rows.push([k,function(c){return k in c.settings?c.settings[k]:'—';}]);});
  rows.push(['workload',function(c){return c.workload;}]);
  Object.keys(D.metrics).forEach(function(m){rows.push([D.metrics[m].label,function(c){return fmtMetric(c,m);},m]);});
  rows.push(['flags',function(c){return c.flags.join('; ')||'none';}]);
  rows.push(['leaderboard rule',function(c){return c.stable===null?'—':c.stable?'stable':'unstable ('+c.unstable_reason+')';}]);
  var t=document.createElement('table');t.className='compare';
  var h=t.insertRow();h.appendChild(document.createElement('th'));
  cells.forEach(function(c){var th=document.createElement('th');th.textContent=c.id;h.appendChild(th);});
  rows.forEach(function(r){
    var tr=t.insertRow(),th=document.createElement('th');th.textContent=r[0];tr.appendChild(th);
    cells.forEach(function(c){var td=tr.insertCell();td.textContent=r[1](c);});
  });
  box.innerHTML='';box.appendChild(t);
}
// The cells' details: their own JSON element, parsed on the first detail opened.
var DETAILS=null;
function details(){if(DETAILS===null)DETAILS=JSON.parse(el('report-details').textContent);return DETAILS;}
// An empty plot box: the previous cell's plot (or note) removed.
function fresh(id){Plotly.purge(id);el(id).textContent='';return el(id);}
function showDetail(id){
  var c=byId[id],d=details()[id]||{},box=el('detail');
  el('detail-title').textContent=c.model+' · '+c.backend+' · '+c.device_name+' · cell '+c.id;
  el('detail-flags').textContent='flags: '+(c.flags.join('; ')||'none')+' · leaderboard rule: '+
    (c.stable===null?'—':c.stable?'stable':'unstable ('+c.unstable_reason+')')+' · energy: '+c.energy_source;
  box.hidden=false;
  var h=d.lengths;
  if(h){
    var x=[],w=[];for(var k=0;k<h.counts.length;k++){x.push((h.bins[k]+h.bins[k+1])/2);w.push(h.bins[k+1]-h.bins[k]);}
    fresh('detail-hist');
    Plotly.newPlot('detail-hist',[{type:'bar',x:x,y:h.counts,width:w,name:'requests'}],
      {title:{text:'Output length distribution',font:{size:13}},margin:{t:30,r:10,b:50,l:60},
       xaxis:{title:{text:'output tokens'}},yaxis:{title:{text:'requests'}}},{displaylogo:false});
  }else{fresh('detail-hist').textContent='No successful requests recorded for this cell.';}
  if(d.power&&d.power.length){
    // Shading: the phases before the cycles (idle, ...), each cycle, its steady state, each
    // in its own colour (D.shading, as in the paper figure) and named in the legend.
    var S=D.shading,shapes=[],named={};
    function shade(kind,x0,x1,opacity){named[kind]=1;shapes.push({type:'rect',xref:'x',yref:'paper',
      x0:x0,x1:x1,y0:0,y1:1,fillcolor:S[kind],opacity:opacity,layer:'below',line:{width:0}});}
    (d.phases||[]).forEach(function(p){shade(p[0],p[1],p[2],1);});
    (d.windows||[]).forEach(function(wd){shade('cycle',wd[0],wd[1],0.25);
      if(wd[2])shade('steady state',wd[2][0],wd[2][1],0.35);});
    var traces=d.power.map(function(p){return {type:'scatter',mode:'lines',
      name:p.device+(p.source?' ('+p.source+')':''),x:p.t_s,y:p.power_w};});
    Object.keys(S).forEach(function(kind){if(named[kind])traces.push({type:'scatter',mode:'markers',
      x:[null],y:[null],name:kind,hoverinfo:'skip',marker:{symbol:'square',size:12,color:S[kind],
      opacity:kind==='cycle'?0.5:kind==='steady state'?0.6:1,line:{width:1,color:'#999'}}});});
    fresh('detail-power');
    Plotly.newPlot('detail-power',traces,
      {title:{text:'Power over time (shaded: phases, cycles, steady state)',font:{size:13}},shapes:shapes,
       margin:{t:30,r:10,b:50,l:60},xaxis:{title:{text:'time since model load (s)'}},
       yaxis:{title:{text:'power (W)'}},legend:{orientation:'h',y:-0.3,font:{size:10}}},{displaylogo:false});
  }else{fresh('detail-power').textContent='No power samples for this cell.';}
}

buildFacets();
['itl-deadline','energy-budget'].forEach(function(id){el(id).addEventListener('input',apply);});
el('itl-percentile').addEventListener('change',resetItl);
el('show-fixed').addEventListener('change',function(){
  document.body.classList.toggle('show-fixed',el('show-fixed').checked);});
['show-flagged','show-unstable','show-reference'].forEach(function(id){if(el(id))el(id).addEventListener('change',apply);});
// The tables' rows are redrawn on every change: one listener each for all their buttons.
document.addEventListener('change',function(e){var b=e.target;if(b.matches('input.pick'))togglePick(b.dataset.cell);});
document.addEventListener('click',function(e){var b=e.target;if(b.matches('button.detail'))showDetail(b.dataset.cell);});
apply();renderCompare();
['chart-throughput','chart-latency'].forEach(function(id){
  el(id).on('plotly_click',function(ev){var p=ev.points[0];if(p&&p.customdata){togglePick(p.customdata);showDetail(p.customdata);}});});
window.llmEnergyReport={data:D,hover:function(id){return hoverText(byId[id]);},
  text:function(id,m){return fmtMetric(byId[id],m);},picked:picked,visible:visible,meets:meets,showDetail:showDetail,
  best:function(kind){return bestIds(kind);}};
})();
